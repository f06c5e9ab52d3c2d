"""Training-forward memory: peak bytes of one forward under autograd (weight and bias require grad, the output is kept
for the backward), for the conv and for the rewrite as users run it. Issue 13's target: <= 1.10x the conv's.

    python -m bench.memory [--device cuda|cpu] [--shapes a,b] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from tabulate import tabulate

import conv_rewrite

from .shapes import CPU_SHAPES, GPU_SHAPES, Shape

Variant = Callable[[nn.Module], Callable[..., Any]]
VARIANTS: dict[str, Variant] = {
    "conv": lambda m: m,
    "convert_ eager": lambda m: (conv_rewrite.convert_(m), m)[1],
    'backend="conv_rewrite"': lambda m: torch.compile(m, backend="conv_rewrite"),
    "inductor_options()": lambda m: torch.compile(m, options=conv_rewrite.inductor_options()),
}


def _conv(shape: Shape, device: str, dtype: torch.dtype) -> nn.Module:
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[shape.dims]
    conv = cls(shape.x[1], shape.out_channels, shape.kernel, stride=shape.kernel, bias=shape.bias)
    return conv.to(device=device, dtype=dtype)


def peak_mib(fn: Callable[..., Any], x: torch.Tensor, device: str) -> float:
    """Peak MiB above what is allocated before one training forward (the output and what autograd keeps)."""
    fn(x).sum().backward()  # compile and warm up outside the measurement
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        out = fn(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
        del out
        return peak / 2**20
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    known = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in fn_params(fn)}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    kept = sum(n for ptr, n in saved.items() if ptr not in known and ptr != out.untyped_storage().data_ptr())
    return (out.untyped_storage().nbytes() + kept) / 2**20


def fn_params(fn: Any) -> list[torch.Tensor]:
    return list(fn.parameters()) if isinstance(fn, nn.Module) else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", help="comma-separated shape names (bench/shapes.py)")
    p.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    args = p.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    shapes = GPU_SHAPES if args.device == "cuda" else CPU_SHAPES
    if args.shapes:
        shapes = tuple(s for s in GPU_SHAPES + CPU_SHAPES if s.name in args.shapes.split(","))
    torch._dynamo.config.recompile_limit = 256
    rows, results = [], []
    for shape in shapes:
        torch.manual_seed(0)
        conv = _conv(shape, args.device, dtype)
        x = torch.randn(shape.x, device=args.device, dtype=dtype)
        peaks = {}
        for name, make in VARIANTS.items():
            torch._dynamo.reset()
            peaks[name] = peak_mib(make(copy.deepcopy(conv)), x, args.device)
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
        ratios = {name: peaks[name] / peaks["conv"] for name in peaks}
        results.append({"shape": shape.name, "peak_mib": peaks, "ratio": ratios})
        rows.append([shape.name] + [f"{peaks[n]:.1f} ({ratios[n]:.2f}x)" for n in VARIANTS])
        del conv, x
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.json"), "w") as f:
        json.dump({"device": args.device, "torch": torch.__version__, "results": results}, f, indent=1)
    print(tabulate(rows, headers=["shape (peak MiB, x conv)", *VARIANTS]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
