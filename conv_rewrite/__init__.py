"""conv_rewrite: patchify convolutions (stride == kernel) as reshape + permute + one GEMM, as an FX rewrite."""

from .aten_pass import AtenConvRewritePass
from .backend import ConvRewriteBackend, backend
from .convert import convert_, restore_
from .explain import Explanation, explain
from .inductor_pass import (
    ConvRewritePass,
    inductor_options,
    inductor_pass,
    install_inductor_pass,
    uninstall_inductor_pass,
)
from .options import Options
from .patchify import patchify_conv
from .record import collect_reports, last_report
from .report import Report, ReportRow
from .rewrite import rewrite

__all__ = [
    "AtenConvRewritePass",
    "ConvRewriteBackend",
    "ConvRewritePass",
    "Explanation",
    "Options",
    "Report",
    "ReportRow",
    "backend",
    "collect_reports",
    "convert_",
    "explain",
    "inductor_options",
    "inductor_pass",
    "install_inductor_pass",
    "last_report",
    "patchify_conv",
    "restore_",
    "rewrite",
    "uninstall_inductor_pass",
]
__version__ = "0.1.0"
