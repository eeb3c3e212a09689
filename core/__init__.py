"""whaleid core: the small torch-free contract shared by training and the service.

Modules: ``errors`` (typed errors), ``manifest`` (the bundle's data contract), ``preprocess``
(photo decoding and model input), ``boxes`` (boxes and the TTA box set), ``fileio`` (atomic writes).
"""

__version__ = "0.1.0"
