"""whaleid: photo-identification of humpback whales from tail flukes.

The command line lives in :mod:`whaleid.cli`; the code is in the ``core``, ``index``, ``training``
and ``service`` packages.
"""

__version__ = "0.1.0"
