"""conv_rewrite: patchify convolutions (stride == kernel) as reshape + permute + one GEMM, as an FX rewrite."""

from .options import Options
from .patchify import patchify_conv
from .report import Report, ReportRow
from .rewrite import rewrite

__all__ = ["Options", "Report", "ReportRow", "patchify_conv", "rewrite"]
__version__ = "0.1.0"
