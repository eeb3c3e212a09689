"""whaleid index: the gallery of known whales (FAISS over L2-normalised embeddings + a SQLite store).

Importing this package imports neither torch nor FAISS; the submodules that need FAISS import it.
"""
