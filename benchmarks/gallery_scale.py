"""Gallery scale: FAISS Flat vs HNSW vs IVF at 10k, 100k and 1M identities (512-d, inner product).

Each gallery size gets the three index kinds the manifest's ``gallery.factory`` can name (the factory strings
of ``index.vectors.VectorIndex``): ``IDMap2,Flat`` (exact; the service's default), ``IDMap2,HNSW32`` (with
``efSearch``) and ``IVF{nlist},Flat`` (with ``nprobe``). Per index: build time (IVF: k-means training and
adding separately), memory (the serialised index, ``faiss.serialize_index``, and the growth of this
process's RSS), the time of one query at a time (the service searches once per request) as p50/p95, and
recall@5 against the exact Flat search of the same queries (the ground truth).

The vectors are L2-normalised float32. ``--data clustered`` (default) draws them around ``--centres`` random
unit centres (Gaussian noise of norm ``--spread`` relative to the unit centre, then renormalised), so each
vector has many close neighbours, as whales that look alike do; ``--data uniform`` draws random unit
vectors, which is easy for approximate search and flatters its recall. The queries are fresh draws from the
same distribution (a new photo of a known whale), never gallery vectors.

The raw FAISS indexes are measured (not ``VectorIndex``, which keeps a second copy of every vector and a
Python id map: 2 GB more at 1M). IVF is trained on ``--ivf-train-per-list`` x nlist vectors with
``--kmeans-iters`` k-means iterations (FAISS's default is 25 iterations on up to 256 x nlist vectors).

Memory: at 1M x 512 the vectors are 2 GB, and each index another 2 GB (plus a 2 GB serialised copy while it
is measured): expect a peak of about 7 GB. Results are written after each size, so a run cut short keeps
the sizes it finished.

Example::

    python benchmarks/gallery_scale.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import gc
import math
import sys
import time

import numpy as np
from common import (
    base_parser,
    machine_info,
    markdown_table,
    print_table,
    ratio,
    rss_mib,
    summarize,
    time_ms,
    write_result,
)

KINDS = ("flat", "hnsw", "ivf")


def parse_args(argv=None):
    p = base_parser("gallery_scale", __doc__)
    p.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000], help="Gallery sizes.")
    p.add_argument("--dim", type=int, default=512, help="Embedding dimension.")
    p.add_argument("--k", type=int, default=5, help="Neighbours per query (recall@k).")
    p.add_argument("--queries", type=int, default=500, help="Queries for recall (searched as one batch).")
    p.add_argument("--timed-queries", type=int, default=50, help="Queries timed one at a time.")
    p.add_argument("--data", choices=["clustered", "uniform"], default="clustered", help="Vector distribution.")
    p.add_argument("--centres", type=int, default=1000, help="Cluster centres of --data clustered.")
    p.add_argument("--spread", type=float, default=1.0, help="Noise norm relative to the unit centre (clustered).")
    p.add_argument("--indexes", nargs="+", choices=KINDS, default=list(KINDS), help="Index kinds to measure.")
    p.add_argument("--hnsw-m", type=int, default=32, help="HNSW links per node (HNSW32).")
    p.add_argument("--ef-construction", type=int, default=40, help="HNSW efConstruction (FAISS's default: 40).")
    p.add_argument("--ef-search", type=int, default=64, help="HNSW efSearch.")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (0: 100 below 50k, 1024 below 500k, else 4096).")
    p.add_argument("--nprobe", type=int, default=8, help="IVF lists visited per query.")
    p.add_argument("--ivf-train-per-list", type=int, default=40, help="IVF training vectors per list.")
    p.add_argument("--kmeans-iters", type=int, default=10, help="k-means iterations of IVF training.")
    p.add_argument(
        "--max-build-s",
        type=float,
        default=240.0,
        help="An HNSW or IVF build still adding after this many seconds is left out (its row says how far it got "
        "and the projected time), so the whole run stays under 10 minutes on 2 cores.",
    )
    p.add_argument("--add-chunk", type=int, default=50_000, help="Vectors per add call (progress and the budget).")
    p.add_argument("--gpu", action="store_true", help="Flat and IVF on the GPU (faiss-gpu); HNSW stays on the CPU.")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def auto_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: 100 below 50k, 1024 below 500k, 4096 above (>= 39 vectors per list)."""
    nlist = 100 if n < 50_000 else 1024 if n < 500_000 else 4096
    return max(1, min(nlist, n // 39))


# -- data -------------------------------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Divide each row of ``x`` ``(n, d) float32`` by its L2 norm, in place; returns ``x``."""
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def make_vectors(n: int, dim: int, centres: np.ndarray | None, spread: float, rng, chunk: int = 65_536):
    """``(n, dim) float32`` unit vectors: around ``centres`` (noise norm ``spread``), or uniform when None."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = rng.standard_normal((e - s, dim), dtype=np.float32)
        if centres is not None:
            x *= spread / math.sqrt(dim)
            x += centres[rng.integers(len(centres), size=e - s)]
        out[s:e] = unit_rows(x)
    return out


# -- indexes ----------------------------------------------------------------------------------


def factory_of(kind: str, args, n: int) -> tuple[str, dict]:
    """FAISS factory string and search parameters of one index kind."""
    if kind == "flat":
        return "IDMap2,Flat", {}
    if kind == "hnsw":
        return f"IDMap2,HNSW{args.hnsw_m}", {"efSearch": args.ef_search, "efConstruction": args.ef_construction}
    nlist = args.nlist or auto_nlist(n)
    return f"IVF{nlist},Flat", {"nprobe": args.nprobe, "nlist": nlist}


def build(kind: str, factory: str, params: dict, xb: np.ndarray, args, rng, gpu_res=None) -> tuple[object, dict]:
    """Build one index over ``xb``, adding in chunks of ``--add-chunk`` vectors.

    Returns:
        ``(index, times)`` with ``times = {"train_s", "add_s", "build_s"}``; ``index`` is None when the build
        went past ``--max-build-s`` (not for Flat, the ground truth): ``times`` then says how many vectors were
        added and the projected build time.
    """
    import faiss

    dim = xb.shape[1]
    use_gpu = gpu_res is not None and kind != "hnsw"
    if use_gpu:  # GPU indexes take positional ids: the Flat/IVF cores without IDMap2 (ids = positions)
        index = faiss.index_factory(dim, factory.replace("IDMap2,", ""), faiss.METRIC_INNER_PRODUCT)
        index = faiss.index_cpu_to_gpu(gpu_res, 0, index)
    else:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = params["efConstruction"]
    times = {"train_s": 0.0}
    t_start = time.perf_counter()
    if not index.is_trained:
        n_train = min(len(xb), args.ivf_train_per_list * params["nlist"])
        sample = xb[np.sort(rng.choice(len(xb), n_train, replace=False))] if n_train < len(xb) else xb
        ivf = index if use_gpu else faiss.extract_index_ivf(index)
        try:
            ivf.cp.niter = args.kmeans_iters
            ivf.cp.max_points_per_centroid = args.ivf_train_per_list
        except AttributeError:  # an index without clustering parameters keeps FAISS's defaults
            print("NOTE: cannot set the k-means parameters of this IVF index; FAISS defaults used", file=sys.stderr)
        index.train(sample)
        times["train_s"] = round(time.perf_counter() - t_start, 3)
        del sample
    t0 = time.perf_counter()
    chunk = max(1, args.add_chunk)
    for s in range(0, len(xb), chunk):
        e = min(len(xb), s + chunk)
        if use_gpu:
            index.add(xb[s:e])
        else:
            index.add_with_ids(xb[s:e], np.arange(s, e, dtype=np.int64))
        elapsed = time.perf_counter() - t_start
        if kind != "flat" and e < len(xb) and elapsed > args.max_build_s:
            add_s = time.perf_counter() - t0
            projected = times["train_s"] + add_s * len(xb) / e
            print(
                f"  {factory}: over --max-build-s {args.max_build_s:.0f} s after {e:,} of {len(xb):,} vectors "
                f"(projected build {projected:.0f} s): left out",
                flush=True,
            )
            times.update(add_s=None, build_s=None, added=e, projected_build_s=round(projected, 1))
            return None, times
    times["add_s"] = round(time.perf_counter() - t0, 3)
    times["build_s"] = round(times["train_s"] + times["add_s"], 3)
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        set_nprobe(index, params["nprobe"], use_gpu)
    return index, times


def set_nprobe(index, nprobe: int, gpu: bool) -> None:
    import faiss

    if not gpu:
        faiss.extract_index_ivf(index).nprobe = nprobe
        return
    try:
        index.nprobe = nprobe
    except AttributeError:
        faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", nprobe)


def serialized_mib(index) -> float:
    """Size of the index as ``faiss.serialize_index`` writes it (GPU indexes: of their CPU copy), in MiB."""
    import faiss

    if type(index).__name__.startswith("Gpu"):
        index = faiss.index_gpu_to_cpu(index)
    blob = faiss.serialize_index(index)
    size = blob.nbytes / 2**20
    del blob
    return round(size, 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k (``(q, k)`` int64 ids) found in its approximate top-k."""
    k = truth.shape[1]
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth, strict=True)]
    return round(float(np.mean(hits)), 4)


def gpu_resources(wanted: bool):
    """``faiss.StandardGpuResources`` when ``wanted`` and faiss-gpu sees a GPU, else None (with a message)."""
    if not wanted:
        return None
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        print("NOTE: --gpu: this FAISS has no GPU support or sees no GPU; measuring on the CPU", file=sys.stderr)
        return None
    return faiss.StandardGpuResources()


# -- main -------------------------------------------------------------------------------------


def table_header(args) -> tuple[str, list[str]]:
    title = (
        f"FAISS gallery, {args.dim}-d {args.data} unit vectors, one query per call, recall@{args.k} against Flat "
        "(x Flat = Flat p50 / index p50)"
    )
    headers = ["identities", "index", "params", "build s", "size MiB", "RSS growth MiB", "ms/query p50", "p95",
               f"recall@{args.k}", "x Flat"]  # fmt: skip
    return title, headers


def main(argv=None) -> dict:
    args = parse_args(argv)
    machine = machine_info()
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    gpu_res = gpu_resources(args.gpu)
    rng = np.random.default_rng(args.seed)
    centres = (
        unit_rows(rng.standard_normal((args.centres, args.dim), dtype=np.float32)) if args.data == "clustered" else None
    )
    config = {
        "sizes": args.sizes,
        "dim": args.dim,
        "k": args.k,
        "queries_for_recall": args.queries,
        "timed_queries": args.timed_queries,
        "data": args.data,
        "centres": args.centres if centres is not None else None,
        "spread": args.spread if centres is not None else None,
        "hnsw": {"M": args.hnsw_m, "efConstruction": args.ef_construction, "efSearch": args.ef_search},
        "ivf": {"nlist": args.nlist or "auto", "nprobe": args.nprobe, "train_per_list": args.ivf_train_per_list,
                "kmeans_iters": args.kmeans_iters},
        "faiss_threads": faiss.omp_get_max_threads(),
        "gpu": gpu_res is not None,
        "timing": "one query per search call (as the service searches), p50/p95 over the timed queries",
    }  # fmt: skip
    rows, table_rows = [], []
    for n in args.sizes:
        t0 = time.perf_counter()
        xb = make_vectors(n, args.dim, centres, args.spread, rng)
        xq = make_vectors(args.queries, args.dim, centres, args.spread, rng)
        print(f"\n{n:,} vectors of {args.dim}-d ({args.data}) made in {time.perf_counter() - t0:.1f} s", flush=True)
        truth = None
        flat_p50 = None
        kinds = ["flat"] + [k for k in args.indexes if k != "flat"]  # Flat first: it is the ground truth
        for kind in kinds:
            factory, params = factory_of(kind, args, n)
            gc.collect()
            rss0 = rss_mib()
            index, times = build(kind, factory, params, xb, args, rng, gpu_res)
            rss1 = rss_mib()
            on = "GPU" if gpu_res is not None and kind != "hnsw" else "CPU"
            if index is None:  # over --max-build-s
                status = "left out: build over --max-build-s"
                row = {"n": n, "index": kind, "factory": factory, "params": params, "device": on, **times}
                rows.append({**row, "status": status})
                projected = f"projected build {times['projected_build_s']:.0f} s"
                over = f"> {args.max_build_s:.0f}"
                table_rows.append([n, f"{factory} ({on})", "not built", over, None, None, None, None, projected, None])
                gc.collect()
                continue
            _, found = index.search(xq, args.k)
            if truth is None:
                truth = found.copy()
            recall = recall_at_k(found, truth)
            for q in xq[: min(3, len(xq))]:  # warm-up
                index.search(q[None], args.k)
            ms = [time_ms(index.search, q[None], args.k) for q in xq[: args.timed_queries]]
            stats = summarize(ms)
            if kind == "flat":
                flat_p50 = stats["p50"]
            size_mib = serialized_mib(index)
            row = {
                "n": n,
                "index": kind,
                "factory": factory,
                "params": params,
                "device": on,
                **times,
                "serialized_mib": size_mib,
                "rss_growth_mib": None if rss0 is None or rss1 is None else round(rss1 - rss0, 1),
                "query_ms": stats,
                "recall_at_k": recall,
                "speedup_vs_flat": ratio(flat_p50, stats["p50"]),
                "status": "ok",
            }
            if kind == "flat" and "flat" not in args.indexes:
                row = None  # Flat was built only as the ground truth
            if row is not None:
                rows.append(row)
                shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "efConstruction" or kind == "hnsw")
                table_rows.append(
                    [n, f"{factory} ({on})", shown or "exact", times["build_s"], size_mib, row["rss_growth_mib"],
                     stats["p50"], stats["p95"], f"{recall:.3f}", row["speedup_vs_flat"]]
                )  # fmt: skip
                print(
                    f"  {factory:<14} build {times['build_s']:8.2f} s  {size_mib:8.1f} MiB  "
                    f"query p50 {stats['p50']:8.3f} ms  recall@{args.k} {recall:.4f}",
                    flush=True,
                )
            del index
            gc.collect()
        del xb, xq, truth
        gc.collect()
        title, headers = table_header(args)
        partial = f"{title}\n\n{markdown_table(headers, table_rows)}"
        write_result(args.out, "gallery_scale", machine, config, {"rows": rows}, [partial])  # after every size
    title, headers = table_header(args)
    print_table(title, headers, table_rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
