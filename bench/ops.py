"""Op level: one patchify conv shape, every variant, forward and forward+backward, checked and timed.

Compiling and checking happen first; the timing is returned as a function to call later, when the GPU is free:
worker processes compile in parallel and time one after another once every compile is done.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import conv_rewrite

from .config import RunConfig
from .shapes import Shape
from .timing import cpu_time, cuda_time, timed_first_call
from .variants import op_variants, prepare

CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
FWD, STEP = "fwd", "fwd+bwd"


def make_conv(shape: Shape, cfg: RunConfig) -> nn.Module:
    conv = CONVS[shape.dims](shape.x[1], shape.out_channels, shape.kernel, stride=shape.kernel, bias=shape.bias)
    return conv.to(cfg.device, cfg.torch_dtype)


def describe(exc: BaseException) -> str:
    """One short line for a failure, kept in the results instead of stopping the run."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float32; NaN when shapes differ."""
    if out.shape != ref.shape:
        return float("nan")
    return float((out.float() - ref).norm() / ref.norm())


def reference(conv: nn.Module, x: torch.Tensor, tokens: bool) -> torch.Tensor:
    """The conv in float32 with TF32 off: what every variant must compute."""
    with torch.no_grad(), _no_tf32():
        y = conv._conv_forward(x.float(), conv.weight.float(), None if conv.bias is None else conv.bias.float())
    return y.flatten(2).transpose(1, 2) if tokens else y


@contextlib.contextmanager
def _no_tf32() -> Any:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def patch_rows(x: torch.Tensor, kernel: tuple[int, ...]) -> torch.Tensor:
    """The contiguous (B*L, C*prod(k)) patch matrix, computed outside anything timed: the floor's input."""
    n = len(kernel)
    outs = [x.shape[2 + i] // k for i, k in enumerate(kernel)]
    split: list[int] = list(x.shape[:2])
    for i, (o, k) in enumerate(zip(outs, kernel)):
        x = x.narrow(2 + i, 0, o * k)
        split += [o, k]
    rows = x.reshape(split).permute(0, *range(2, 2 + 2 * n, 2), 1, *range(3, 3 + 2 * n, 2))
    return rows.reshape(x.shape[0] * math.prod(outs), -1).contiguous()


class Floor(nn.Module):
    """The bare GEMM on rows that are already patchified: no variant can beat it by more than noise."""

    def __init__(self, conv: nn.Module, rows: torch.Tensor, out_shape: tuple[int, ...]):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().reshape(conv.weight.shape[0], -1).clone())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        self.rows = rows
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.rows, self.weight, self.bias)

    def as_output(self, y: torch.Tensor, tokens: bool) -> torch.Tensor:
        """The GEMM result laid out like the variant outputs, for the correctness check."""
        batch, out_channels, *outs = self.out_shape
        y = y.view(batch, *outs, out_channels)
        return y.flatten(1, -2) if tokens else y.permute(0, len(outs) + 1, *range(1, len(outs) + 1))


def _timer(cfg: RunConfig) -> Callable[[Callable[[], Any]], tuple[float, str]]:
    if cfg.device == "cuda":
        return lambda fn: cuda_time(fn, cfg.rep_ms, graph=True)
    return lambda fn: cpu_time(fn, cfg.rep_ms)


def prepare_shape(shape: Shape, tokens: bool, cfg: RunConfig) -> Callable[[], list[dict[str, Any]]]:
    """Compile and check every variant on one shape now; the returned function times them, one row per
    (variant, fwd | fwd+bwd)."""
    torch.manual_seed(0)
    conv = make_conv(shape, cfg)
    x = torch.randn(shape.x, device=cfg.device, dtype=cfg.torch_dtype)
    ref = reference(conv, x, tokens)
    grad_out = torch.randn(ref.shape, device=cfg.device, dtype=cfg.torch_dtype)
    case = f"{shape.name}{' +tokens' if tokens else ''}"
    base = {"kind": "op", "case": case, "shape": shape.name, "tokens": tokens, "gflop": shape.gflop, "gemm": shape.gemm}
    prepared: list[tuple[str, Callable[..., Any], list[torch.nn.Parameter], dict[str, Any]]] = []
    for variant in (v for v in op_variants(cfg.max_autotune) if cfg.wants(v.name)):
        fn = prepare(variant, conv, tokens)
        params = [p for p in fn.parameters() if p.requires_grad]
        info = _first_calls(fn, x, params, grad_out, ref, cfg, lambda y: y)
        prepared.append((variant.name, fn, params, info | {"compiled": variant.compiled}))
    if cfg.wants("floor"):
        floor = Floor(conv, patch_rows(x, shape.kernel), tuple(reference(conv, x, False).shape))
        info = _first_calls(
            floor,
            x,
            list(floor.parameters()),
            grad_out.reshape(-1, shape.out_channels),
            ref,
            cfg,
            lambda y: floor.as_output(y, tokens),
        )
        prepared.append(("floor", floor, list(floor.parameters()), info | {"compiled": False}))
    del ref

    def time_all() -> list[dict[str, Any]]:
        rows = []
        timer = _timer(cfg)
        for name, fn, params, info in prepared:
            g = grad_out.reshape(-1, shape.out_channels) if name == "floor" else grad_out
            rows += _time_variant(name, fn, x, params, g, timer, base, info)
        return rows

    return time_all


def _first_calls(
    fn: Callable[..., Any],
    x: torch.Tensor,
    params: list[torch.Tensor],
    grad_out: torch.Tensor,
    ref: torch.Tensor,
    cfg: RunConfig,
    as_output: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Any]:
    """Compile (first calls), record compile seconds, rewritten convs and the error against the float32 conv."""
    info: dict[str, Any] = {}
    try:
        with conv_rewrite.collect_reports() as report:
            with torch.no_grad():
                out, info["compile_fwd_s"] = timed_first_call(lambda: fn(x), cfg.device)
            _, info["compile_step_s"] = timed_first_call(
                lambda: torch.autograd.grad(fn(x), params, grad_out), cfg.device
            )
        info["rewritten"] = len(report.rewritten)
        info["err"] = rel_err(as_output(out), ref)
        info["ok"] = info["err"] <= cfg.tolerance
    except Exception as exc:  # a variant that fails is reported, the others still run
        info["error"] = describe(exc)
    return info


def _time_variant(
    name: str,
    fn: Callable[..., Any],
    x: torch.Tensor,
    params: list[torch.Tensor],
    grad_out: torch.Tensor,
    timer: Callable[[Callable[[], Any]], tuple[float, str]],
    base: dict[str, Any],
    info: dict[str, Any],
) -> list[dict[str, Any]]:
    rows = []
    for mode in (FWD, STEP):
        row = base | info | {"variant": name, "mode": mode}
        if "error" not in info:
            try:
                if mode == FWD:
                    with torch.no_grad():
                        row["ms"], row["method"] = timer(lambda: fn(x))
                else:
                    row["ms"], row["method"] = timer(lambda: torch.autograd.grad(fn(x), params, grad_out))
            except Exception as exc:
                row["error"] = describe(exc)
        rows.append(row)
    return rows
