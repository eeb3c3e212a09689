"""MAP@5 exactly as Kaggle scored the Humpback Whale Identification competition (torch-free).

The definitions live in :mod:`index.ranking` (one for the whole project: training, calibration,
``evaluate``, ``predict`` and the report) and are re-exported here with the rule that puts
``new_whale`` into a ranked list.
"""

from __future__ import annotations

from index.ranking import NEW_WHALE, average_precision_at_k, insert_new_whale, map_at_k, top1_accuracy

__all__ = ["NEW_WHALE", "insert_new_whale", "average_precision_at_k", "map_at_k", "top1_accuracy"]
