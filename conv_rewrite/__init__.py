"""conv_rewrite: patchify convolutions (stride == kernel) as reshape + permute + one GEMM, exactly.

Importing the package loads nothing but itself: each name below imports its module (and torch's compiler stack, for
the torch.compile entry points) when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .compile import backend, inductor_options
    from .convert import convert_, restore_
    from .options import Options
    from .patchify import patchify_conv
    from .record import collect_reports
    from .report import Report
    from .tools.explain import explain
    from .transform import rewrite

_PUBLIC = {
    "Options": "options",
    "Report": "report",
    "backend": "compile",
    "collect_reports": "record",
    "convert_": "convert",
    "explain": "tools.explain",
    "inductor_options": "compile",
    "patchify_conv": "patchify",
    "restore_": "convert",
    "rewrite": "transform",
}
__all__ = [  # the keys of _PUBLIC, written out so that tools read them
    "Options",
    "Report",
    "backend",
    "collect_reports",
    "convert_",
    "explain",
    "inductor_options",
    "patchify_conv",
    "restore_",
    "rewrite",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
