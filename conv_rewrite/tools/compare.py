"""Compare one model three ways: eager, torch.compile, and torch.compile with the rewrite (numerics and time).

What ``conv-rewrite demo`` and ``conv-rewrite inspect`` print per model. Timings are medians of synchronized
calls without autograd, after a warm-up call that compiles.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ..compile import backend
from ..options import Options

# Largest |compiled - eager| accepted, relative to max |eager|: float32 reorders sums, 16-bit types round.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}


@dataclass(frozen=True)
class Comparison:
    """Times in ms; ``max_abs_err`` of the rewritten compile against eager, and whether it is within tolerance."""

    eager_ms: float
    compiled_ms: float
    rewritten_ms: float
    max_abs_err: float
    numerics_ok: bool

    @property
    def speedup(self) -> float:
        """What the rewrite buys over torch.compile alone."""
        return self.compiled_ms / self.rewritten_ms


def _outputs(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    return []


def max_abs_error(actual: Any, expected: Any) -> tuple[float, bool]:
    """(max |actual - expected| over every output tensor, whether each is within its dtype's tolerance)."""
    worst, ok = 0.0, True
    pairs = list(zip(_outputs(actual), _outputs(expected), strict=True))
    for a, e in pairs:
        err = (a.double() - e.double()).abs().max().item() if e.numel() else 0.0
        scale = max(e.double().abs().max().item() if e.numel() else 0.0, 1.0)
        worst = max(worst, err)
        ok = ok and err <= TOLERANCE.get(e.dtype, 0.0) * scale
    return worst, ok


def median_ms(fns: list[Callable[..., Any]], inputs: tuple[Any, ...], repeats: int, warmup: int = 3) -> list[float]:
    """Median wall time in ms of each of ``fns`` on ``inputs``, synchronizing CUDA around each call.

    The functions take turns, so drift and bursts of load on a shared machine hit all of them alike; the first
    calls of a freshly compiled function are slower than the rest, hence the warm-up calls.
    """
    cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn in fns:
        for _ in range(warmup):
            fn(*inputs)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, times in zip(fns, samples):
            sync()
            start = time.perf_counter()
            fn(*inputs)
            sync()
            times.append(time.perf_counter() - start)
    return [statistics.median(times) * 1e3 for times in samples]


def compare(
    model: Callable[..., Any],
    inputs: tuple[Any, ...],
    *,
    repeats: int = 10,
    options: Options | None = None,
    progress: Callable[[str], AbstractContextManager[Any]] = lambda label: contextlib.nullcontext(),
) -> Comparison:
    """Run ``model`` eagerly, compiled by Inductor, and compiled by Inductor after the rewrite; check and time each.

    ``progress(label)`` wraps each compile (the first call of a compiled model), e.g. to show that it is running.
    """
    compiled = torch.compile(model)
    rewritten = torch.compile(model, backend=backend(options=options))
    with torch.no_grad():
        expected = model(*inputs)
        with progress("torch.compile"):
            compiled(*inputs)
        with progress("torch.compile + conv_rewrite"):
            actual = rewritten(*inputs)
        err, ok = max_abs_error(actual, expected)
        times = median_ms([model, compiled, rewritten], inputs, repeats)
    return Comparison(*times, max_abs_err=err, numerics_ok=ok)
