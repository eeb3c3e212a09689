"""The starter model: a fluke embedding shipped with whaleid, so that a catalogue can be served without
training (``whaleid quickstart``), and fine-tuned from (``model.init_from``, ``quickstart --train``).

``starter/`` at the root of the checkout (``whaleid/starter_bundle`` links to it, as ``whaleid/configs``
does to ``configs/``) holds a bundle without a gallery: ``model.onnx`` (exported ``--fine-tunable``:
every weight under its PyTorch name), ``detector.onnx`` (the fluke detector that places the TTA boxes),
``manifest.json`` and ``MODEL_CARD.md`` (data, recipe, measured accuracy, terms).
Torch-free: copying the starter and splitting photos need neither torch nor timm.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from core.errors import ConfigError, ManifestMismatchError
from core.fileio import atomic_write_json, sha256_file
from core.manifest import MANIFEST_NAME, Manifest, load_manifest
from index.labels import load_photos, split_by_identity, split_to_json

STARTER_FOLDER = "starter"
PACKAGED_FOLDER = "starter_bundle"  # inside the whaleid package (package data)
# the split of configs/cpu-small.yaml and configs/cpu-lite0.yaml (the README's playground2018 split at seed 0)
VAL_OPEN_FRACTION = 0.05
VAL_CLOSED_FRACTION = 1.0
VAL_NEW_WHALE_FRACTION = 0.3


def starter_bundle() -> Path:
    """The shipped starter bundle (``starter/`` of the checkout, or the copy inside the package).

    Raises:
        ConfigError: no starter bundle is installed.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / STARTER_FOLDER, here / PACKAGED_FOLDER):
        if (candidate / MANIFEST_NAME).is_file() and (candidate / "model.onnx").is_file():
            return candidate
    raise ConfigError(
        f"no starter model next to the whaleid package ({here.parent / STARTER_FOLDER}): pass --starter BUNDLE, "
        "or --train to train a model instead"
    )


def copy_starter(starter: str | Path, bundle: str | Path) -> Manifest:
    """Copy a starter bundle's model and manifest into ``bundle`` (created; an old gallery is left to
    ``build-gallery --reset``). The copy keeps the starter's preprocessing and TTA; its thresholds,
    scoring mode and local-feature settings are the starter's until the quickstart calibrates them.

    Returns:
        The copied manifest.

    Raises:
        ConfigError: ``starter`` is not a bundle.
        ManifestError: its manifest is invalid, or its model does not match the manifest's checksum.
    """
    src, dst = Path(starter), Path(bundle)
    if not (src / MANIFEST_NAME).is_file():
        raise ConfigError(f"{src} is not a bundle (no {MANIFEST_NAME})")
    manifest = load_manifest(src)
    dst.mkdir(parents=True, exist_ok=True)
    names = ["model.onnx", MANIFEST_NAME, "MODEL_CARD.md"]
    if manifest.detector is not None:
        names.append(manifest.detector.file)
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    return manifest


def copy_detector(src: str | Path, bundle: str | Path) -> bool:
    """Give ``bundle`` the fluke detector of bundle ``src`` (its ``detector.onnx`` and manifest entry), so
    that its TTA boxes surround the detected fluke as in ``src``. Used after ``quickstart --train``: the
    detector does not depend on the embedding network, so a bundle fine-tuned from the starter keeps it.

    Returns:
        ``True`` when a detector was copied, ``False`` when ``src`` has none.

    Raises:
        ManifestError: either manifest is invalid; ManifestMismatchError (one) when ``src``'s detector file
            does not match its checksum.
    """
    src, bundle = Path(src), Path(bundle)
    spec = load_manifest(src).detector
    if spec is None:
        return False
    if sha256_file(src / spec.file) != spec.sha256:
        raise ManifestMismatchError(f"{src / spec.file} does not match the checksum in {src / MANIFEST_NAME}")
    manifest = load_manifest(bundle)
    shutil.copyfile(src / spec.file, bundle / spec.file)
    manifest.with_detector(spec).save(bundle)
    return True


def split_photos(
    images: str | Path, labels: str | Path, boxes: str | Path | None, out: str | Path, seed: int = 0
) -> dict:
    """Split labelled photos by whale as ``whaleid train`` does with the CPU configs (5 % of the whales held
    out whole, one photo of each whale with two or more, 30 % of the new_whale photos; seed 0), and
    write ``split.json`` into ``out`` (read by :func:`whaleid.workflows.split_csv`).

    Returns:
        The split's summary (photo and query counts).

    Raises:
        ConfigError: unreadable labels, or photos missing from ``images``.
    """
    photos = load_photos(images, labels, boxes, [], 0, seed)
    split = split_by_identity(photos, VAL_OPEN_FRACTION, VAL_CLOSED_FRACTION, VAL_NEW_WHALE_FRACTION, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "split.json", split_to_json(split))
    return split.summary()
