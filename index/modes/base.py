"""What a scoring mode is: the evidence it ranks, the interface it implements, and the registry.

A scoring mode turns one query's :class:`Evidence` (its embedding ranking, cosines, RANSAC-verified
photos, LNBNN votes) into scored :class:`~index.local.rank.RankedIdentity` entries; the top-k rule
(:func:`top_k`: ties, one entry per identity) is shared by every mode. The service
(:class:`index.identify.Identifier`), ``whaleid predict``, ``calibrate`` and ``compare-modes``
(:mod:`index.study`) all rank through :func:`rank`, so a mode ranks the same everywhere.

Modes register themselves at their definition site, as timm registers models::

    @register
    class InliersOnly(ScoringMode):
        name = "inliers_only"
        needs_local_features = True
        ...

and are looked up by name (:func:`get`, :func:`names`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.manifest import Manifest
    from index.gallery import Hit
    from index.local.matcher import IdentityMatch

#: Scores equal to this many decimals tie and are ordered by inliers, LNBNN score, whale id (as in index.gallery).
TIE_DECIMALS = 6

#: How much local matching a mode needs: none, the embedding shortlist's identities, or every identity.
MatchScope = Literal["none", "shortlist", "all"]


@dataclass(frozen=True, eq=False)
class RankedIdentity:
    """One identity of a ranking, with the evidence behind its score.

    Attributes:
        whale_id, identity_id: the identity.
        score: the scoring mode's score (cosine, local score or fused score), used for the ranking
            and compared with the mode's new_whale threshold.
        cosine: embedding cosine similarity, when known.
        inliers, matches: RANSAC inliers and ratio-test matches of the best photo (None in
            embedding mode).
        local_score: calibrated local score, fused_score: fused score (None when not computed).
        image_id: the gallery photo with the most inliers.
        pairs: ``(inliers, 2, 2) float32`` inlier pairs (query point, gallery point) in photo
            pixels, only when asked for (``explain``).
        lnbnn: LNBNN score of the identity's best-voted photo (``matcher="lnbnn"``; 0 when no
            vote), which breaks ties of equal scores and inliers.
    """

    whale_id: str
    identity_id: int
    score: float
    cosine: float | None = None
    inliers: int | None = None
    matches: int | None = None
    local_score: float | None = None
    fused_score: float | None = None
    image_id: int | None = None
    pairs: np.ndarray | None = None
    lnbnn: float | None = None
    #: evidence of other cues a mode adds (e.g. ``edge_distance``), reported as they are
    extra: dict[str, Any] | None = None


@dataclass
class Evidence:
    """One query's evidence about the gallery's identities (what every mode ranks from).

    Attributes:
        names: ``identity_id -> whale_id`` of the identities that may be answered (mirror identities left out).
        extras: per-query data of other cues, from :meth:`ScoringMode.query_extras`.
        gallery: the gallery searched, for modes that read more of the store.
        ranking: the embedding search's hits, best first (at least as many as the widest mode asked for).
        matches: ``identity_id -> IdentityMatch`` of the identities whose photos RANSAC verified.
        lnbnn: ``identity_id -> LNBNN score`` of the identities the descriptor index voted for
            (HotSpotter's matcher), or None with the brute-force matcher.
        similarity: returns ``identity_id -> cosine`` for identities outside ``ranking`` (the
            query's embedding against their centroids); None when there is no embedding.
    """

    names: Mapping[int, str]
    ranking: Sequence[Hit] = ()
    matches: Mapping[int, IdentityMatch] = field(default_factory=dict)
    lnbnn: Mapping[int, float] | None = None
    similarity: Callable[[list[int]], Mapping[int, float]] | None = None
    #: what modes computed from the query photo itself (:meth:`ScoringMode.query_extras`), e.g. its edge
    extras: dict[str, Any] = field(default_factory=dict)
    #: the gallery (modes that read their own data from its store, e.g. stored edges)
    gallery: Any = None
    _cosine: dict[int, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:  # the ranking's cosines are known
        self._cosine.update({h.identity_id: float(h.score) for h in self.ranking})

    @property
    def verified(self) -> list[int]:
        """Identities with a RANSAC-verified photo, in the matcher's order."""
        return [i for i in self.matches if i in self.names]

    def cosines(self, ids: Sequence[int]) -> dict[int, float]:
        """``identity_id -> cosine`` for ``ids`` (computed once for identities outside the ranking; 0.0
        without an embedding)."""
        missing = [i for i in ids if i not in self._cosine]
        if missing:
            found = self.similarity(missing) if self.similarity is not None else {}
            self._cosine.update({i: float(found.get(i, 0.0)) for i in missing})
        return {i: self._cosine[i] for i in ids}

    def inliers(self, ident: int) -> int:
        m = self.matches.get(ident)
        return m.inliers if m is not None else 0

    def lnbnn_of(self, ident: int) -> float | None:
        return None if self.lnbnn is None else float(self.lnbnn.get(ident, 0.0))


_NO_PAIRS = np.zeros((0, 2, 2), np.float32)


def local_entry(
    ev: Evidence,
    ident: int,
    score: float,
    cosine: float | None = None,
    local_score: float | None = None,
    fused_score: float | None = None,
    explain: bool = False,
    extra: dict[str, Any] | None = None,
) -> RankedIdentity:
    """A ranked identity carrying its local evidence (inliers, matches, best photo, LNBNN score and, with
    ``explain``, the inlier pairs; no pairs when it was not verified)."""
    m = ev.matches.get(ident)
    pairs = (m.result.pairs if m is not None else _NO_PAIRS) if explain else None
    return RankedIdentity(
        ev.names[ident],
        ident,
        float(score),
        cosine,
        m.inliers if m is not None else 0,
        m.matches if m is not None else 0,
        local_score,
        fused_score,
        m.image_id if m is not None else None,
        pairs,
        ev.lnbnn_of(ident),
        extra,
    )


@dataclass(frozen=True)
class Pairs:
    """Query-candidate pairs for fitting a mode's calibration (one row per pair).

    Attributes:
        same_whale: ``(n,) bool`` the candidate is the query's whale.
        cosine, inliers, lnbnn: ``(n,) float64`` the pair's embedding cosine, RANSAC inliers and LNBNN
            score (0 where not measured); ``lnbnn`` is None with the brute-force matcher.
        query: ``(n,) int64`` the query of each pair (``0 .. q-1``), or None when unknown.
        query_is_new: ``(q,) bool`` the query is a new whale (its whale is not in the gallery), or None.
    """

    same_whale: np.ndarray
    cosine: np.ndarray
    inliers: np.ndarray
    lnbnn: np.ndarray | None
    #: other features of a mode's own (:meth:`ScoringMode.pair_features`), ``name -> (n,) float64``
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    query: np.ndarray | None = None
    query_is_new: np.ndarray | None = None


class ScoringMode:
    """A scoring mode: which identities it considers for a query and how it scores them.

    Subclasses set ``name`` (lower-case, used in the manifest, the settings and ``?scoring=``),
    ``needs_local_features`` and ``summary``, and implement :meth:`candidates` and :meth:`entries`;
    a mode with calibrated coefficients also implements :meth:`params`, :meth:`fit` and
    :meth:`with_params`.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_local_features: ClassVar[bool] = False

    def is_available(self, manifest: Manifest) -> bool:
        """Whether a bundle can serve the mode (default: it has local features when the mode needs them)."""
        return manifest.local_features is not None or not self.needs_local_features

    def embedding_k(self, manifest: Manifest, k: int) -> int:
        """Embedding hits the mode needs for a top-``k`` answer (default ``k``)."""
        return k

    def query_extras(self, manifest: Manifest, pixels: np.ndarray, box) -> dict[str, Any]:
        """What the mode computes from the query photo itself (``(H, W, 3) uint8`` pixels, base box or None),
        put into :attr:`Evidence.extras` (default: nothing)."""
        return {}

    def pair_features(self, ev: Evidence, ids: Sequence[int], manifest: Manifest) -> dict[str, np.ndarray]:
        """The mode's own features of query-candidate pairs, for :class:`Pairs` (default: none)."""
        return {}

    def response_extras(self, ev: Evidence, explain: bool) -> dict[str, Any]:
        """Fields the mode adds to an identify response (default: none)."""
        return {}

    def match_scope(self, manifest: Manifest) -> MatchScope:
        """How much local matching the mode needs (default: none)."""
        return "none"

    def candidates(self, ev: Evidence, manifest: Manifest, k: int) -> list[int]:
        """The identity ids the mode scores for this query (answerable ones only)."""
        raise NotImplementedError

    def entries(
        self, ev: Evidence, ids: Sequence[int], params, manifest: Manifest, explain: bool = False
    ) -> list[RankedIdentity]:
        """Scored entries of ``ids`` with the mode's coefficients ``params``."""
        raise NotImplementedError

    def params(self, manifest: Manifest):
        """The mode's coefficients saved in the manifest (None: it has none)."""
        return None

    def fit(self, pairs: Pairs, manifest: Manifest):
        """Coefficients fitted on genuine/impostor pairs, or None (nothing to fit, or one class missing)."""
        return None

    def with_params(self, manifest: Manifest, params) -> Manifest:
        """The manifest with ``params`` saved as the mode's coefficients."""
        return manifest


_REGISTRY: dict[str, ScoringMode] = {}


def register(cls: type[ScoringMode]) -> type[ScoringMode]:
    """Class decorator: register a scoring mode under ``cls.name`` (replacing one of that name)."""
    if not cls.name or not cls.name.replace("_", "").isalnum() or cls.name != cls.name.lower():
        raise ValueError(f"a scoring mode needs a lower-case name of letters, digits and _, got {cls.name!r}")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    """Remove a registered mode (tests registering a toy mode clean up with this)."""
    _REGISTRY.pop(name, None)


def names() -> list[str]:
    """Registered mode names, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> ScoringMode:
    """The registered mode ``name``.

    Raises:
        ConfigError: no mode of that name (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown scoring mode {name!r} (known: {', '.join(_REGISTRY)})") from None


def available(manifest: Manifest) -> list[str]:
    """The registered modes a bundle can serve (those needing local features only when it has them)."""
    return [n for n, m in _REGISTRY.items() if m.is_available(manifest)]


def top_k(entries: list[RankedIdentity], k: int) -> list[RankedIdentity]:
    """The best ``k`` distinct identities: by score (equal to ``TIE_DECIMALS`` decimals: more inliers,
    then the higher LNBNN score, then whale id), keeping each identity's first entry (wildlife-tools' rule)."""
    entries = sorted(
        entries,
        key=lambda e: (
            -round(e.score, TIE_DECIMALS),
            -(e.inliers or 0),
            -round(e.lnbnn or 0.0, TIE_DECIMALS),
            e.whale_id,
        ),
    )
    seen: set[str] = set()
    out = []
    for e in entries:
        if e.whale_id not in seen:
            seen.add(e.whale_id)
            out.append(e)
        if len(out) == k:
            break
    return out


def rank(
    mode: ScoringMode | str, ev: Evidence, manifest: Manifest, k: int = 5, explain: bool = False, params=None
) -> list[RankedIdentity]:
    """A mode's top-``k`` for one query (``params``: coefficients other than the manifest's, e.g. a
    cross-fitted fold's)."""
    mode = get(mode) if isinstance(mode, str) else mode
    ids = mode.candidates(ev, manifest, k)
    coef = mode.params(manifest) if params is None else params
    return top_k(mode.entries(ev, ids, coef, manifest, explain), k)
