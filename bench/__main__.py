"""``python -m bench``: see ``bench/cli.py``."""

from .cli import main

raise SystemExit(main())
