"""Moved to :mod:`evalsuite.backends.engine.prefix_tree`; this name stays for existing imports."""
from .engine.prefix_tree import PrefixTree, Score, tree_of

__all__ = ["PrefixTree", "Score", "tree_of"]
