"""Tools around the library: the conv-rewrite command (``cli``: its arguments, no torch; ``commands``: what it runs),
its demo models, the timing comparison and explain()."""
