"""Local matching at scale: HotSpotter's LNBNN descriptor index vs brute-force RANSAC, 2k to 100k photos.

The question: what does the ``local`` stage of a query (LNBNN votes over the descriptor index, then RANSAC
on the ``--verify-k`` best-voted photos; :mod:`index.lnbnn`) cost as the gallery grows, how much memory
does the index take per photo, and how does that compare with the brute-force matcher (RANSAC against
every gallery photo, ``matcher="brute_force"``) in the same run?

Photos. ``--base`` real photos of ``../shared/data/flukes/playground2018/images`` (or ``--images``) are
read and their SIFT features extracted exactly as enrolment does (``index.local.LocalFeatureExtractor``,
the manifest's defaults: 400 keypoints, 512 px crops). A gallery of N photos reuses them: photo ``i`` has
the keypoints of base photo ``i mod base`` and its descriptors with Gaussian noise (``--noise`` on the
0..255 scale, seeded by ``i``, rounded and clipped), so every photo is a distinct identity whose
descriptors look like real ones (the noise keeps copies from being exact duplicates, which would make
every nearest neighbour a tie). The ``--queries`` query photos are other real photos, never in the base.
The descriptor index is built by the product's own class (``index.lnbnn.DescriptorIndex``) from a stand-in
store that serves those photos, with the manifest's factory (``auto`` by default) and ``nprobe``.

The index is built on all cores (``--build-threads``); the queries are timed with ``--threads``.
Timed per query (one query at a time, as the service runs them): the nearest-neighbour search and the
LNBNN votes (``DescriptorIndex.votes``), then ``index.local.match`` (ratio test + RANSAC) against the
``--verify-k`` best-voted photos. Brute force: ``match`` against every gallery photo for the first
``--brute-queries`` queries, at gallery sizes up to ``--brute-max`` photos; above that it is reported as
the measured time per photo pair times N (brute force is linear in N by construction), marked as such.

Memory: ``DescriptorIndex.memory_bytes`` (codes, ids and coarse quantiser, from the index's layout) per
photo, and the growth of this process's RSS while the index was built.

Example::

    python benchmarks/lnbnn_scale.py --sizes 2000 20000 100000
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    FLUKES,
    base_parser,
    machine_info,
    print_table,
    ratio,
    rss_mib,
    summarize,
    write_result,
)

from core.manifest import LocalFeatureSpec
from core.preprocess import load_image_file
from index.build import FOLDER_LIMITS
from index.lnbnn import DescriptorIndex
from index.local import LocalFeatureExtractor, LocalFeatures, match


class SyntheticStore:
    """Stands in for ``GalleryStore``: ``n`` photos, photo ``i`` owned by identity ``i``; its features
    are base photo ``i mod len(base)``'s, descriptors perturbed by seeded noise."""

    def __init__(self, base: list[LocalFeatures], n: int, noise: float):
        self.base, self.n, self.noise = base, int(n), float(noise)
        self.generation = 1

    def local_feature_owners(self) -> dict[int, int]:
        return {i: i for i in range(self.n)}

    def local_features_of_images(self, image_ids):
        return [(int(i), int(i), b"") for i in image_ids if 0 <= int(i) < self.n]

    def features(self, i: int) -> LocalFeatures:
        b = self.base[i % len(self.base)]
        if i < len(self.base) or self.noise <= 0:
            return b
        rng = np.random.default_rng(i)
        desc = np.clip(np.rint(b.descriptors + rng.normal(0.0, self.noise, b.descriptors.shape)), 0, 255)
        return LocalFeatures(b.keypoints, desc.astype(np.uint8), b.crop_to_photo, b.crop_size_px)

    def descriptors(self, image_id: int, _blob: bytes) -> np.ndarray:
        return self.features(image_id).descriptors


def extract(paths: list[Path], spec: LocalFeatureSpec) -> list[LocalFeatures]:
    ex = LocalFeatureExtractor(spec)
    return [ex.extract(load_image_file(p, FOLDER_LIMITS).pixels) for p in paths]


def main() -> None:
    p = base_parser("lnbnn_scale", __doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 100000], help="Gallery sizes (photos).")
    p.add_argument("--images", type=Path, default=FLUKES / "playground2018" / "images", help="Real photos.")
    p.add_argument("--base", type=int, default=1000, help="Real photos whose features the galleries reuse.")
    p.add_argument("--queries", type=int, default=20, help="Query photos (real, not in the base).")
    p.add_argument("--noise", type=float, default=6.0, help="Std of the descriptor noise of reused photos.")
    p.add_argument("--factory", default="auto", help="Descriptor index factory (LocalFeatureSpec.descriptor_factory).")
    p.add_argument("--nprobe", type=int, default=LocalFeatureSpec().nprobe, help="Inverted lists visited.")
    p.add_argument("--verify-k", type=int, default=LocalFeatureSpec().verify_k, help="Photos verified by RANSAC.")
    p.add_argument("--brute-queries", type=int, default=3, help="Queries matched against every photo.")
    p.add_argument("--brute-max", type=int, default=20000, help="Largest gallery brute force is run on.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--index-dir",
        type=Path,
        default=None,
        help="Keep each size's descriptor index here and load it on the next run instead of rebuilding "
        "(DescriptorIndex's own cache on disk; the build time column then shows the load).",
    )
    p.add_argument(
        "--build-threads",
        type=int,
        default=0,
        help="FAISS threads while building the index (0: all cores); --threads applies to the timed queries.",
    )
    args = p.parse_args()
    import cv2
    import faiss

    def threads(n: int | None) -> None:
        if n:
            faiss.omp_set_num_threads(n)
            cv2.setNumThreads(n)

    all_cores = faiss.omp_get_max_threads()
    threads(args.threads)
    spec = LocalFeatureSpec(verify_k=args.verify_k, nprobe=args.nprobe, descriptor_factory=args.factory)
    files = sorted(f for f in Path(args.images).glob("*.jpg"))
    if len(files) < args.base + args.queries:
        sys.exit(f"need {args.base + args.queries} photos in {args.images}, found {len(files)} (../shared absent?)")
    pick = np.random.default_rng(args.seed).permutation(len(files))
    base_files = [files[i] for i in pick[: args.base]]
    query_files = [files[i] for i in pick[args.base : args.base + args.queries]]
    t0 = time.perf_counter()
    base = extract(base_files, spec)
    queries = extract(query_files, spec)
    print(f"features of {len(base)} + {len(queries)} real photos in {time.perf_counter() - t0:.0f} s", flush=True)
    machine = machine_info()
    config = {**vars(args), "images": str(args.images), "out": str(args.out), "spec": spec.model_dump()}
    results: dict = {"sizes": {}}
    rows, tables = [], []
    pair_ms = None  # brute force: ms per photo pair, measured at the smallest size
    first = None
    for n in args.sizes:
        store = SyntheticStore(base, n, args.noise)
        gc.collect()
        rss0 = rss_mib()
        t0 = time.perf_counter()
        key = f"{n}-{args.base}-{args.noise}-{args.seed}"
        index = DescriptorIndex(
            store,
            store.descriptors,
            spec.descriptor_factory,
            spec.lnbnn_k,
            spec.nprobe,
            path=None if args.index_dir is None else args.index_dir / f"lnbnn-{key}.faiss",
            fingerprint=f"{key}/{spec.n_keypoints}/{spec.crop_width_px}",
        )
        faiss.omp_set_num_threads(args.build_threads or all_cores)
        index.sync()
        threads(args.threads)
        build_s = time.perf_counter() - t0
        rss1 = rss_mib()
        mem = index.memory_bytes()
        vote_ms, verify_ms, local_ms = [], [], []
        for q in queries:
            t0 = time.perf_counter()
            votes = index.votes(q.descriptors)
            t1 = time.perf_counter()
            for image_id in votes.image_ids[: spec.verify_k].tolist():
                match(q, store.features(image_id), spec)
            t2 = time.perf_counter()
            vote_ms.append((t1 - t0) * 1e3)
            verify_ms.append((t2 - t1) * 1e3)
            local_ms.append((t2 - t0) * 1e3)
        brute_ms, brute_measured = None, False
        if n <= args.brute_max and args.brute_queries > 0:
            times = []
            for q in queries[: args.brute_queries]:
                t0 = time.perf_counter()
                for i in range(n):
                    match(q, store.features(i), spec)
                times.append((time.perf_counter() - t0) * 1e3)
            brute_ms, brute_measured = float(np.median(times)), True
            pair_ms = pair_ms or brute_ms / n
        elif pair_ms is not None:
            brute_ms = pair_ms * n
        s = summarize(local_ms)
        first = first or s["p50"]
        entry = {
            "photos": n,
            "descriptors": index.n_descriptors,
            "factory": index.built_factory,
            "build_s": round(build_s, 2),
            "index_origin": index.origin,
            "index_bytes": mem,
            "bytes_per_photo": round(mem / n, 1),
            "rss_growth_mib": None if rss0 is None or rss1 is None else round(rss1 - rss0, 1),
            "votes_ms": summarize(vote_ms),
            "verify_ms": summarize(verify_ms),
            "local_ms": s,
            "brute_force_ms": None if brute_ms is None else round(brute_ms, 1),
            "brute_force_measured": brute_measured,
        }
        results["sizes"][str(n)] = entry
        rows.append(
            [
                n,
                index.n_descriptors,
                index.built_factory,
                f"{build_s:.1f}" + (" (loaded)" if index.origin == "loaded" else ""),
                round(mem / 2**20, 1),
                round(mem / n / 1024, 1),
                entry["votes_ms"]["p50"],
                entry["verify_ms"]["p50"],
                s["p50"],
                s["p95"],
                ratio(s["p50"], first),
                "–" if brute_ms is None else f"{brute_ms:,.0f}{'' if brute_measured else ' (est.)'}",
                ratio(brute_ms, s["p50"]),
            ]
        )
        print(f"{n} photos: {entry}", flush=True)
        del index, store
        tables = [
            print_table(
                f"LNBNN local stage vs brute force ({len(queries)} real queries, verify_k {spec.verify_k}, "
                f"nprobe {spec.nprobe}; brute force over {args.brute_queries} queries, est. = ms per pair x N)",
                [
                    "photos",
                    "descriptors",
                    "index",
                    "build s",
                    "index MiB",
                    "KiB/photo",
                    "votes p50",
                    "RANSAC p50",
                    "local p50",
                    "local p95",
                    "x at smallest",
                    "brute force ms",
                    "brute / LNBNN",
                ],
                rows,
            )
        ]
        write_result(args.out, "lnbnn_scale", machine, config, results, tables)


if __name__ == "__main__":
    main()
