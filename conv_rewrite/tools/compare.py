"""Compare one model three ways: eager, torch.compile, and torch.compile with the rewrite (numerics and time).

What ``conv-rewrite demo`` and ``conv-rewrite inspect`` print per model. The three take turns call by call, so a busy
machine slows them alike; each gets a median and an interquartile range, and a speedup is claimed only where the
rewrite changed something and the two ranges do not overlap.
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
class Timing:
    """Wall times of repeated calls in ms: the median and the interquartile range (q1, q3)."""

    median: float
    q1: float
    q3: float
    calls: int

    @classmethod
    def of(cls, seconds: list[float]) -> Timing:
        ms = sorted(s * 1e3 for s in seconds)
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (ms[0], ms[0], ms[0])
        return cls(statistics.median(ms), q1, q3, len(ms))

    def __str__(self) -> str:
        return f"{self.median:.2f} ({self.q1:.2f}-{self.q3:.2f})"


@dataclass(frozen=True)
class Comparison:
    """Timings of the three ways to run; ``rewritten_convs`` by the rewriting compile, whose ``max_abs_err`` against
    eager is within tolerance when ``numerics_ok``. ``rewritten`` is None where nothing was rewritten (not timed: it
    is torch.compile's own graph)."""

    eager: Timing
    compiled: Timing
    rewritten: Timing | None
    rewritten_convs: int
    max_abs_err: float
    numerics_ok: bool

    @property
    def speedup(self) -> float | None:
        """compiled / rewritten median, where the rewrite changed something and the two ranges do not overlap."""
        r, c = self.rewritten, self.compiled
        if r is None or not (r.q3 < c.q1 or r.q1 > c.q3):
            return None
        return c.median / r.median

    @property
    def verdict(self) -> str:
        """What the rewrite did to torch.compile's time, in words that claim no more than was measured."""
        if self.rewritten is None:
            return "no change (no conv rewritten)"
        speedup = self.speedup
        if speedup is None:
            return "no clear difference"
        return f"{speedup:.2f}x faster" if speedup > 1 else f"{1 / speedup:.2f}x slower"


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


def time_calls(fns: list[Callable[..., Any]], inputs: tuple[Any, ...], repeats: int, warmup: int = 3) -> list[Timing]:
    """Each of ``fns`` called ``repeats`` times on ``inputs``, taking turns, synchronizing CUDA around each call.

    Taking turns spreads drift and bursts of load on a shared machine over all of them alike; the first calls of a
    freshly compiled function are slower than the rest, hence the warm-up calls.
    """
    cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for fn in fns:
        for _ in range(warmup):
            fn(*inputs)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(max(repeats, 1)):
        for fn, times in zip(fns, samples):
            sync()
            start = time.perf_counter()
            fn(*inputs)
            sync()
            times.append(time.perf_counter() - start)
    return [Timing.of(times) for times in samples]


def compare(
    model: Callable[..., Any],
    inputs: tuple[Any, ...],
    *,
    repeats: int = 10,
    options: Options | None = None,
    progress: Callable[[str], AbstractContextManager[Any]] = lambda label: contextlib.nullcontext(),
) -> Comparison:
    """Run ``model`` eagerly, compiled by Inductor, and compiled by Inductor after the rewrite; check and time each.

    ``options`` as for the rewrite (None: the library's defaults). ``progress(label)`` wraps each compile (the
    first call of a compiled model), e.g. to show that it is running.
    """
    compiled = torch.compile(model)
    rewriting = backend(options=options)
    rewritten = torch.compile(model, backend=rewriting)
    with torch.no_grad():
        expected = model(*inputs)
        with progress("torch.compile"):
            compiled(*inputs)
        with progress("torch.compile + conv_rewrite"):
            actual = rewritten(*inputs)
        err, ok = max_abs_error(actual, expected)
        convs = len(rewriting.report.rewritten)
        fns = [model, compiled, rewritten] if convs else [model, compiled]
        times = time_calls(fns, inputs, repeats)
    return Comparison(
        eager=times[0],
        compiled=times[1],
        rewritten=times[2] if convs else None,
        rewritten_convs=convs,
        max_abs_err=err,
        numerics_ok=ok,
    )
