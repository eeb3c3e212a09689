"""Scoring modes: one registry, one file per mode (see :mod:`index.modes.base`).

Built in: ``embedding`` (:mod:`index.modes.embedding`), ``local`` (:mod:`index.modes.local`) and
``fused`` (:mod:`index.modes.fused`). A new mode is one new module in this package with a ``@register``
class: every module here is imported (and so registered) when the package is.
"""

import importlib
import pkgutil

from index.modes.base import (
    Evidence,
    MatchScope,
    Pairs,
    RankedIdentity,
    ScoringMode,
    available,
    get,
    names,
    rank,
    register,
    top_k,
    unregister,
)
from index.modes.evidence import gather

#: The built-in modes, registered first and in this order (the order /ready and compare-modes list them).
BUILT_IN = ("embedding", "local", "fused")
_INFRASTRUCTURE = {"base", "evidence"}

for _name in [*BUILT_IN, *sorted(m.name for m in pkgutil.iter_modules(__path__))]:
    if _name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_name}")  # each mode module registers itself

__all__ = [
    "Evidence",
    "MatchScope",
    "Pairs",
    "RankedIdentity",
    "ScoringMode",
    "available",
    "gather",
    "get",
    "names",
    "rank",
    "register",
    "top_k",
    "unregister",
]
