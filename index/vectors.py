"""A FAISS index over L2-normalised float32 vectors with int64 ids (cosine = inner product).

The index is described by a FAISS factory string (``"IDMap2,Flat"``, ``"IDMap2,HNSW32"``,
``"IVF1024,Flat"``...). A copy of every vector is kept in memory so the index can be rebuilt
when the factory cannot remove vectors (HNSW) or must be trained first (IVF): an IVF index serves
exact (flat) search until it holds enough vectors to train (``39 * nlist``, FAISS's guideline).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import faiss
import numpy as np

from core.errors import CorruptArtifactError
from core.fileio import atomic_write_bytes

MIN_TRAIN_PER_LIST = 39


def as_float32_matrix(x, dim: int, what: str = "vectors") -> np.ndarray:
    """Return ``x`` as a C-contiguous ``(n, dim) float32`` array.

    Raises:
        ValueError: wrong number of columns, or NaN/inf values.
    """
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return arr


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm: ``(n, d)`` float32 in, ``(n, d)`` float32 out."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def _nlist(factory: str) -> int:
    m = re.search(r"IVF(\d+)", factory)
    return int(m.group(1)) if m else 0


class VectorIndex:
    """Inner-product FAISS index with int64 ids and an in-memory copy of the vectors.

    Args:
        dim: vector dimension.
        factory: FAISS factory string; ``IDMap2,`` is prepended when the string has no id mapping
            and no IVF (IVF indexes map ids themselves).

    Raises:
        ValueError: an unknown factory string (FAISS's message is kept).
    """

    def __init__(self, dim: int, factory: str = "IDMap2,Flat"):
        self.dim = int(dim)
        self.factory = factory
        self._nlist = _nlist(factory)
        self._ids = np.empty(0, dtype=np.int64)
        self._vecs = np.empty((0, self.dim), dtype=np.float32)
        self._row: dict[int, int] = {}
        self._index = self._new_index(trained_on=None)
        self.trained = self._index.is_trained

    # -- construction ------------------------------------------------------------------------

    def _full_factory(self) -> str:
        if self._nlist or self.factory.startswith("IDMap"):
            return self.factory
        return "IDMap2," + self.factory

    def _new_index(self, trained_on: np.ndarray | None):
        if self._nlist and (trained_on is None or len(trained_on) < MIN_TRAIN_PER_LIST * self._nlist):
            # Not enough vectors to train IVF yet: exact search meanwhile.
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        try:
            index = faiss.index_factory(self.dim, self._full_factory(), faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"invalid FAISS factory string {self.factory!r}: {exc}") from exc
        if not index.is_trained:
            index.train(trained_on)
        return index

    def _rebuild(self) -> None:
        self._index = self._new_index(self._vecs if len(self._vecs) else None)
        if len(self._ids):
            self._index.add_with_ids(self._vecs, self._ids)
        self.trained = bool(self._nlist) and not isinstance(self._index, faiss.IndexIDMap2)

    # -- mutation ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, vid: int) -> bool:
        return int(vid) in self._row

    @property
    def ids(self) -> np.ndarray:
        """``(n,) int64`` ids in storage order."""
        return self._ids.copy()

    def vector(self, vid: int) -> np.ndarray:
        """The stored ``(d,) float32`` vector of ``vid`` (KeyError when absent)."""
        return self._vecs[self._row[int(vid)]].copy()

    def upsert(self, ids, vectors) -> None:
        """Add vectors, replacing those whose id is already present.

        Args:
            ids: ``(n,)`` int64, distinct.
            vectors: ``(n, d)`` float32, L2-normalised by the caller.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = as_float32_matrix(vectors, self.dim)
        if len(ids) != len(vecs):
            raise ValueError(f"{len(ids)} ids for {len(vecs)} vectors")
        if len(set(ids.tolist())) != len(ids):
            raise ValueError("ids must be distinct")
        present = [int(i) for i in ids if int(i) in self._row]
        if present:
            self.remove(present)
        start = len(self._ids)
        self._ids = np.concatenate([self._ids, ids])
        self._vecs = np.concatenate([self._vecs, vecs]) if start else vecs.copy()
        for j, vid in enumerate(ids.tolist()):
            self._row[vid] = start + j
        needs_training = self._nlist and not self.trained and len(self._ids) >= MIN_TRAIN_PER_LIST * self._nlist
        if needs_training:
            self._rebuild()
        else:
            self._index.add_with_ids(vecs, ids)

    def remove(self, ids) -> int:
        """Remove vectors by id; unknown ids are ignored. Returns how many were removed."""
        doomed = {int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1) if int(i) in self._row}
        if not doomed:
            return 0
        keep = np.array([int(i) not in doomed for i in self._ids], dtype=bool)
        self._ids, self._vecs = self._ids[keep], self._vecs[keep]
        self._row = {int(v): r for r, v in enumerate(self._ids.tolist())}
        try:
            removed = self._index.remove_ids(np.fromiter(doomed, dtype=np.int64))
            if removed != len(doomed):
                raise RuntimeError("partial removal")
        except RuntimeError:
            self._rebuild()  # e.g. HNSW cannot remove: rebuild from the kept copy
        return len(doomed)

    # -- search ------------------------------------------------------------------------------

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest vectors of each query by inner product.

        Args:
            queries: ``(q, d) float32``, L2-normalised.
            k: neighbours per query (>= 1).

        Returns:
            ``(scores (q, k) float32, ids (q, k) int64)``, best first; missing results have id ``-1``
            and score ``-inf``.
        """
        q = as_float32_matrix(queries, self.dim, "queries")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(self._ids) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        scores, ids = self._index.search(q, int(k))
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        return scores, ids.astype(np.int64)

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Write the FAISS index, its ids and vectors to one file, atomically (temporary file, fsync, rename).

        The file is an ``.npz`` archive (no pickle) holding ``faiss`` (``faiss.serialize_index``
        bytes), ``ids`` ``(n,) int64``, ``vectors`` ``(n, d) float32`` and ``meta`` (JSON).
        """
        header = {"dim": self.dim, "factory": self.factory, "count": len(self._ids), **(meta or {})}
        buf = io.BytesIO()
        np.savez(
            buf,
            faiss=faiss.serialize_index(self._index),
            ids=self._ids,
            vectors=self._vecs,
            meta=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        )
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path, dim: int, factory: str) -> tuple[VectorIndex, dict]:
        """Read a file written by :meth:`save`; returns the index and its ``meta`` header.

        Raises:
            CorruptArtifactError: the file is missing, truncated, not such a file, or holds another
                dimension, factory or vector count than expected.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                raw, ids, vecs = z["faiss"], z["ids"], z["vectors"]
                meta = json.loads(z["meta"].tobytes().decode())
            index = faiss.deserialize_index(raw)
        except (OSError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, EOFError) as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise CorruptArtifactError(path, f"cannot read the gallery index ({reason})") from exc
        if meta.get("dim") != dim or index.d != dim or vecs.shape[1:] != (dim,):
            raise CorruptArtifactError(path, f"the index has dimension {meta.get('dim')}, expected {dim}")
        if meta.get("factory") != factory:
            raise CorruptArtifactError(path, f"the index was built as {meta.get('factory')!r}, expected {factory!r}")
        if not (len(ids) == len(vecs) == index.ntotal == meta.get("count")):
            raise CorruptArtifactError(path, "the index, its ids and its vectors hold different counts")
        out = cls(dim, factory)
        out._index = index
        out._ids = ids.astype(np.int64)
        out._vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        out._row = {int(v): r for r, v in enumerate(out._ids.tolist())}
        out.trained = bool(out._nlist) and not isinstance(index, faiss.IndexIDMap2)
        return out, meta
