"""What a benchmark run is asked to do, in one picklable object that every worker process receives."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOLERANCE = {"bf16": 2e-2, "fp16": 5e-3, "fp32": 5e-3}


@dataclass(frozen=True)
class RunConfig:
    """Device, precision and time limits of one run."""

    device: str = "cuda"
    dtype: str = "bf16"
    quick: bool = False
    max_autotune: bool = False
    rep_ms: float = 20.0
    model_rep_ms: float = 60.0
    cudnn_benchmark: bool = True
    cold_compile: bool = True
    only: tuple[str, ...] = ()

    def wants(self, variant: str) -> bool:
        """Whether column ``variant`` is part of this run (``only`` empty: every column)."""
        return not self.only or variant in self.only

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]


def setup_torch(cfg: RunConfig) -> None:
    """Process-wide settings: room for the many compiled variants (every shape compiled static, though they share
    code objects such as Conv3d.forward, and none reset while another waits to be timed), cuDNN's best algorithm,
    compile caches off (``cold_compile``) so compile times are cold and no variant reuses another's kernels; then
    one warm-up compile so that the compiler toolchain's one-time start is not counted against the first variant
    timed. The rewrite
    columns measure the rewrite itself: policy "always" unless CONV_REWRITE_POLICY says otherwise (e.g. "auto").
    """
    from .variants import register_backend_name

    os.environ.setdefault("CONV_REWRITE_POLICY", "always")
    torch._dynamo.config.recompile_limit = 512
    torch._dynamo.config.accumulated_recompile_limit = 8192
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._inductor.config.force_disable_caches = cfg.cold_compile
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    register_backend_name()
    x = torch.randn(8, 16, device=cfg.device, requires_grad=True)
    torch.compile(lambda t: (t * 2).t().contiguous().sum())(x).backward()
    torch._dynamo.reset()
