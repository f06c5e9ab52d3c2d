"""Tools around the library: the conv-rewrite command, its demo models, timing comparisons and explain()."""
