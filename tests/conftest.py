"""Import ``conv_rewrite`` from this checkout, even where another checkout of it is pip-installed (editable)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
