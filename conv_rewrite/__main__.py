"""``python -m conv_rewrite``: the ``conv-rewrite`` command."""

import sys

from .tools.cli import main

sys.exit(main())
