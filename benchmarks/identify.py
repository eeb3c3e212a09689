"""``POST /identify`` end to end: time per stage, one client, 8 concurrent clients, and the bare embedder.

Against a running server (``--url``) or one this script starts on a bundle (``--bundle``: ``python -m
whaleid serve`` on a free port of 127.0.0.1, serving a temporary copy of the bundle's gallery, stopped at
the end). The photos are real uploads (``../shared/data/flukes/images``, the original JPEG bytes; synthetic
photos when it is absent).

1. One client, sequential requests, per scoring mode (``embedding``, and ``fused`` when the bundle has
   local features): the server's own stage times (``timing_ms``: decode, boxes, embed, search, local,
   total) and the client's round trip, p50 and p95.
2. ``--concurrency`` clients (threads, one ``httpx.Client`` each) sharing ``--concurrent-requests``
   requests: requests per second and the latency p50/p95, and the throughput ratio to one client.
3. The bare embedder: the bundle's ``model.onnx`` called directly in this process on one photo's TTA batch
   (the same 5 boxes the server embeds), before and after the requests, while the server idles. The
   ratios server-embed / bare and round-trip / bare show what the service adds around the network.

Client and server share the machine's cores, so the client's own work (encoding the upload, parsing JSON)
is part of every round trip and competes with the server under concurrency.

Examples::

    python benchmarks/identify.py --bundle artifacts/quickstart/bundle
    python benchmarks/identify.py --url http://127.0.0.1:8000 --bundle artifacts/quickstart/bundle
"""

from __future__ import annotations

import itertools
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import (
    REPO,
    base_parser,
    load_photos,
    machine_info,
    preload_cuda_libraries,
    print_table,
    ratio,
    summarize,
    time_ms,
    write_result,
)

from service.process import ServeProcess

STAGES = ("decode", "boxes", "embed", "search", "local", "total")
#: Threshold sent for a scoring mode the bundle has no calibrated threshold for (it changes no timing).
FALLBACK_THRESHOLD = 0.5


def parse_args(argv=None):
    p = base_parser("identify", __doc__)
    p.add_argument("--url", help="Base URL of a running server, e.g. http://127.0.0.1:8000.")
    p.add_argument("--bundle", type=Path, help="Bundle to serve (without --url) and to time the bare embedder on.")
    p.add_argument("--gallery-dir", type=Path, help="Gallery to serve (default: a temporary copy of the bundle's).")
    p.add_argument("--images", type=Path, help="Folder of photos (default: ../shared/data/flukes/images).")
    p.add_argument("--photos", type=int, default=20, help="Distinct photos the requests cycle through.")
    p.add_argument("--include-large", action="store_true", help="Also pick the few photos up to 5959 px wide.")
    p.add_argument("--requests", type=int, default=40, help="Timed sequential requests per scoring mode.")
    p.add_argument("--warmup", type=int, default=3, help="Untimed requests per scoring mode first.")
    p.add_argument("--concurrency", type=int, default=8, help="Concurrent clients.")
    p.add_argument("--concurrent-requests", type=int, default=80, help="Requests shared by the concurrent clients.")
    p.add_argument(
        "--scoring",
        nargs="+",
        default=["embedding", "fused"],
        choices=["embedding", "local", "fused"],
        help="Scoring modes for the one-client run (those the bundle lacks are skipped); the first one is "
        "used for the concurrent run.",
    )
    p.add_argument(
        "--enrol", type=int, default=0, help="First enrol this many extra photos, one whale each (POST /gallery)."
    )
    p.add_argument("--api-key", help="X-API-Key for --enrol when the server requires one.")
    p.add_argument("--bare-repeats", type=int, default=20, help="Bare embedder calls, before and after.")
    p.add_argument(
        "--providers", nargs="+", help="onnxruntime providers of the bare embedder (default: CUDA when available)."
    )
    p.add_argument(
        "--server-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="Extra environment of the started server, e.g. WHALEID_INTRA_OP_THREADS=2 WHALEID_BATCH_WAIT_MS=3.",
    )
    p.add_argument("--startup-timeout", type=float, default=180.0, help="Seconds to wait for the server's /ready.")
    p.add_argument("--timeout", type=float, default=120.0, help="HTTP timeout per request, in seconds.")
    args = p.parse_args(argv)
    if not args.url and not args.bundle:
        p.error("give --url of a running server or --bundle to start one (or both)")
    for item in args.server_env:
        if "=" not in item:
            p.error(f"--server-env takes NAME=VALUE, got {item!r}")
    return args


# -- the server -------------------------------------------------------------------------------


class LocalServer(ServeProcess):
    """``python -m whaleid serve BUNDLE`` on a free port of 127.0.0.1, run from the repository, its output
    in ``log`` (:class:`service.process.ServeProcess`)."""

    def __init__(self, bundle: Path, gallery_dir: Path | None, log: Path, env: dict[str, str]):
        super().__init__(bundle, gallery_dir, log, env, cwd=REPO)


# -- requests ---------------------------------------------------------------------------------


def identify_once(client, url: str, photo, mode: str, threshold: float | None) -> tuple[float, dict]:
    """One ``POST /identify``: ``(round trip in ms, the server's timing_ms)``.

    Raises:
        RuntimeError: any status other than 200 (with the response's text).
    """
    params = {"scoring": mode}
    if threshold is not None:
        params["threshold"] = threshold
    t0 = time.perf_counter()
    resp = client.post(url + "/identify", params=params, files={"file": (photo.name, photo.data, "image/jpeg")})
    ms = (time.perf_counter() - t0) * 1e3
    if resp.status_code != 200:
        raise RuntimeError(f"POST /identify ({mode}) answered {resp.status_code}: {resp.text[:500]}")
    return ms, resp.json()["timing_ms"]


def stage_stats(timings: list[dict]) -> dict[str, dict]:
    """Per-stage :func:`common.summarize` over the servers' ``timing_ms`` dicts (stages never seen left out)."""
    out = {}
    for stage in STAGES:
        values = [t[stage] for t in timings if stage in t]
        if values:
            out[stage] = summarize(values)
    return out


def run_single(url: str, photos, mode: str, threshold, n: int, warmup: int, timeout: float) -> dict:
    """``n`` sequential requests of one client (after ``warmup``); round trips and server stages."""
    import httpx

    rtt, timings = [], []
    with httpx.Client(timeout=timeout) as client:
        for i in range(warmup):
            identify_once(client, url, photos[i % len(photos)], mode, threshold)
        for i in range(n):
            ms, t = identify_once(client, url, photos[i % len(photos)], mode, threshold)
            rtt.append(ms)
            timings.append(t)
    return {"round_trip_ms": summarize(rtt), "stages_ms": stage_stats(timings)}


def run_concurrent(url: str, photos, mode: str, threshold, clients: int, total: int, timeout: float) -> dict:
    """``clients`` threads with one ``httpx.Client`` each share ``total`` requests; throughput and latency."""
    import httpx

    counter = itertools.count()
    lock = threading.Lock()
    rtt, timings, errors = [], [], []

    def worker():
        with httpx.Client(timeout=timeout) as client:
            while True:
                with lock:
                    i = next(counter)
                if i >= total:
                    return
                try:
                    ms, t = identify_once(client, url, photos[i % len(photos)], mode, threshold)
                except Exception as exc:  # noqa: BLE001 - reported below, after the threads finish
                    with lock:
                        errors.append(str(exc)[:300])
                    return
                with lock:
                    rtt.append(ms)
                    timings.append(t)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} concurrent requests failed, e.g.: {errors[0]}")
    return {
        "clients": clients,
        "requests": len(rtt),
        "wall_s": round(wall_s, 3),
        "requests_per_s": round(len(rtt) / wall_s, 3),
        "latency_ms": summarize(rtt),
        "stages_ms": stage_stats(timings),
    }


def enrol(url: str, photos, api_key: str | None, timeout: float) -> int:
    """Enrol each photo as its own whale (``bench-0000``...) through ``POST /gallery``. Returns how many."""
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(timeout=timeout, headers=headers) as client:
        for i, photo in enumerate(photos):
            resp = client.post(
                url + "/gallery",
                data={"whale_id": f"bench-{i:04d}"},
                files=[("files", (photo.name, photo.data, "image/jpeg"))],
            )
            if resp.status_code != 201:
                raise RuntimeError(f"POST /gallery answered {resp.status_code}: {resp.text[:500]}")
    return len(photos)


# -- the bare embedder ------------------------------------------------------------------------


class BareEmbedder:
    """The bundle's ``model.onnx`` in this process, on one photo's TTA batch as the server builds it."""

    def __init__(self, bundle: Path, photo, providers, threads):
        from core.manifest import load_manifest
        from index.embedder import PhotoEmbedder, load_embedder_model

        preload_cuda_libraries(providers or [])
        manifest = load_manifest(bundle)
        self.model = load_embedder_model(bundle, manifest, providers, threads)
        embedder = PhotoEmbedder(lambda b: b, manifest.preprocess, manifest.tta)
        pixels = photo.pixels()
        batch = embedder.batch_for(pixels, embedder.boxes_for(pixels))
        # with a detector the server embeds the policy's boxes around the detected box: same count by default
        n_boxes = len(manifest.tta.boxes) if manifest.detector is not None else len(manifest.tta.fallback)
        self.batch = np.ascontiguousarray(np.resize(batch, (n_boxes, *batch.shape[1:])))
        self.model(self.batch)  # warm-up

    def time(self, repeats: int) -> list[float]:
        return [time_ms(self.model, self.batch) for _ in range(repeats)]


def shortlist_k(bundle: Path | None) -> int | None:
    """The bundle's ``local_features.shortlist_k`` (identities re-ranked by ``fused``), when known."""
    if bundle is None:
        return None
    from core.manifest import load_manifest

    spec = load_manifest(bundle).local_features
    return spec.shortlist_k if spec is not None else None


def report(single: dict, concurrent: dict, bare_all: dict, n_boxes: int | None, requests: int, k: int | None):
    """Tables and ratios of a run: ``(tables, ratios, fused_added)`` (printed as they are built).

    Args:
        single: ``mode -> run_single(...)`` in the order measured; the first mode is the concurrent run's.
        concurrent: :func:`run_concurrent`'s result.
        bare_all: :func:`common.summarize` of the bare embedder calls (``p50`` None without a bundle).
        n_boxes: boxes of the bare embedder's batch (None: not measured).
        requests: sequential requests per mode.
        k: the bundle's fused shortlist size, when known.
    """
    bare_p50 = bare_all["p50"]
    tables, ratios = [], {}
    rows = []
    modes = list(single)
    mode0 = modes[0]
    for mode in modes:
        s = single[mode]
        for stage, st in s["stages_ms"].items():
            rows.append([mode, f"server {stage}", st["p50"], st["p95"], ratio(st["p50"], bare_p50)])
        rt = s["round_trip_ms"]
        rows.append([mode, "client round trip", rt["p50"], rt["p95"], ratio(rt["p50"], bare_p50)])
        ratios[mode] = {
            "server_embed / bare_embedder": ratio(s["stages_ms"]["embed"]["p50"], bare_p50),
            "server_total / bare_embedder": ratio(s["stages_ms"]["total"]["p50"], bare_p50),
            "round_trip / bare_embedder": ratio(rt["p50"], bare_p50),
        }
    if n_boxes:
        rows.append(["–", f"bare embedder, {n_boxes} boxes, in process", bare_p50, bare_all["p95"], 1.0])
    tables.append(
        print_table(
            f"/identify, one client, {requests} requests per mode (ms; x bare = p50 / bare embedder p50)",
            ["scoring", "stage", "p50", "p95", "x bare"],
            rows,
        )
    )
    fused_added = None
    if "embedding" in single and "fused" in single:
        e, f = single["embedding"], single["fused"]
        fused_added = {
            "total_p50_ms": round(f["stages_ms"]["total"]["p50"] - e["stages_ms"]["total"]["p50"], 3),
            "round_trip_p50_ms": round(f["round_trip_ms"]["p50"] - e["round_trip_ms"]["p50"], 3),
            "local_stage_ms": f["stages_ms"].get("local"),
        }
        k_text = k or "?"
        tables.append(
            print_table(
                f"fused vs embedding scoring: added time per query (ms), shortlist K = {k_text}",
                ["measure", "added p50", "local stage p50", "local stage p95"],
                [
                    [
                        "server total",
                        fused_added["total_p50_ms"],
                        (fused_added["local_stage_ms"] or {}).get("p50"),
                        (fused_added["local_stage_ms"] or {}).get("p95"),
                    ],
                    ["client round trip", fused_added["round_trip_p50_ms"], None, None],
                ],
            )
        )
    one_rps = 1000.0 / single[mode0]["round_trip_ms"]["mean"]
    c = concurrent
    ratios["concurrent"] = {
        "throughput / one_client_throughput": ratio(c["requests_per_s"], one_rps),
        "latency_p50 / one_client_p50": ratio(c["latency_ms"]["p50"], single[mode0]["round_trip_ms"]["p50"]),
    }
    tables.append(
        print_table(
            f"/identify throughput, scoring={mode0} (x one client = requests/s / one client's requests/s)",
            ["clients", "requests", "requests/s", "latency p50", "p95", "server embed p50", "x one client"],
            [
                [1, requests, round(one_rps, 2), single[mode0]["round_trip_ms"]["p50"],
                 single[mode0]["round_trip_ms"]["p95"], single[mode0]["stages_ms"]["embed"]["p50"], 1.0],
                [c["clients"], c["requests"], c["requests_per_s"], c["latency_ms"]["p50"], c["latency_ms"]["p95"],
                 c["stages_ms"]["embed"]["p50"], ratios["concurrent"]["throughput / one_client_throughput"]],
            ],
        )
    )  # fmt: skip
    return tables, ratios, fused_added


# -- main -------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = machine_info()
    import httpx

    # `timeout` and friends send SIGTERM: exit through the finally below, which stops the started server
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    photo_set = load_photos(args.photos + args.enrol, args.images, args.include_large)
    to_enrol, photos = photo_set.photos[: args.enrol], photo_set.photos[args.enrol :]
    tmp = tempfile.TemporaryDirectory(prefix="whaleid-bench-identify-")
    server = None
    try:
        url = args.url.rstrip("/") if args.url else None
        if url is None:
            from core.manifest import load_manifest

            gallery = args.gallery_dir
            if gallery is None:
                src = args.bundle / load_manifest(args.bundle).gallery.folder
                gallery = Path(tmp.name) / "gallery"
                if src.is_dir():
                    shutil.copytree(src, gallery)
            env = dict(item.split("=", 1) for item in args.server_env)
            print(f"starting `whaleid serve {args.bundle}` (gallery {gallery}) ...", flush=True)
            server = LocalServer(args.bundle, gallery, Path(tmp.name) / "server.log", env)
            server.start(args.startup_timeout)
            url = server.url
        if to_enrol:
            print(f"enrolling {len(to_enrol)} photos as new whales ...", flush=True)
            enrol(url, to_enrol, args.api_key, args.timeout)
        ready = httpx.get(url + "/ready", timeout=args.timeout).json()
        modes = [m for m in args.scoring if m in ready["scoring_modes"]]
        skipped = [m for m in args.scoring if m not in ready["scoring_modes"]]
        for m in skipped:
            print(f"NOTE: scoring mode {m!r} skipped: the bundle offers {ready['scoring_modes']}", file=sys.stderr)
        if not modes:
            raise SystemExit(f"none of the scoring modes {args.scoring} is available ({ready['scoring_modes']})")
        thresholds = {m: (None if m in ready.get("thresholds", {}) else FALLBACK_THRESHOLD) for m in modes}
        print(
            f"server {url}: {ready['model_version']} at {ready['input_size']}, gallery {ready['gallery_size']} "
            f"whales, providers {ready['providers']}; photos: {photo_set.source}",
            flush=True,
        )

        bare = BareEmbedder(args.bundle, photos[0], args.providers, args.threads) if args.bundle else None
        bare_before = bare.time(args.bare_repeats) if bare else []

        single, failed = {}, {}
        for mode in modes:
            print(f"one client, {args.requests} requests, scoring={mode} ...", flush=True)
            try:
                single[mode] = run_single(url, photos, mode, thresholds[mode], args.requests, args.warmup, args.timeout)
            except RuntimeError as exc:  # a mode that fails is reported; the others are still measured
                failed[mode] = str(exc)
                print(f"WARNING: scoring={mode} failed, left out: {exc}", file=sys.stderr, flush=True)
        if not single:
            raise RuntimeError(f"every scoring mode failed: {failed}")
        modes = [m for m in modes if m in single]
        mode0 = modes[0]
        print(f"{args.concurrency} clients, {args.concurrent_requests} requests, scoring={mode0} ...", flush=True)
        concurrent = run_concurrent(
            url, photos, mode0, thresholds[mode0], args.concurrency, args.concurrent_requests, args.timeout
        )
        bare_after = bare.time(args.bare_repeats) if bare else []
    except Exception:
        if server is not None:
            print(f"--- the server's log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()

    bare_all = summarize(bare_before + bare_after)
    n_boxes = len(bare.batch) if bare else None
    tables, ratios, fused_added = report(single, concurrent, bare_all, n_boxes, args.requests, shortlist_k(args.bundle))
    for key, rs in ratios.items():
        print(f"{key}: " + ", ".join(f"{k} = {v}" for k, v in rs.items()))
    config = {
        "url": args.url or "started by the benchmark (python -m whaleid serve, 127.0.0.1)",
        "bundle": args.bundle,
        "server": {k: ready.get(k) for k in ("model_version", "input_size", "providers", "gpu", "gallery_size",
                                             "gallery_factory", "tta", "scoring_modes", "thresholds")},
        "server_env": args.server_env,
        "photos": photo_set.source,
        "synthetic_photos": photo_set.synthetic,
        "enrolled_before": len(to_enrol),
        "requests_per_mode": args.requests,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "concurrent_requests": args.concurrent_requests,
        "scoring_modes": modes,
        "skipped_modes": skipped,
        "failed_modes": failed,
        "threshold_sent": thresholds,
        "bare_repeats": args.bare_repeats,
        "bare_providers": bare.model.providers if bare else None,
        "fused_shortlist_k": shortlist_k(args.bundle),
    }  # fmt: skip
    results = {
        "single_client": single,
        "concurrent": concurrent,
        "bare_embedder_ms": {
            "boxes": len(bare.batch) if bare else None,
            "before": summarize(bare_before),
            "after": summarize(bare_after),
            "all": bare_all,
        },
        "fused_added_ms": fused_added,
        "ratios": ratios,
    }
    write_result(args.out, "identify", machine, config, results, tables)
    return results


if __name__ == "__main__":
    main()
