"""Timers: medians of device time on CUDA (inside CUDA graphs where they capture), wall-time medians on CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def cuda_time(fn: Callable[[], Any], rep_ms: float, graph: bool) -> tuple[float, str]:
    """Median milliseconds of ``fn`` and how it was timed.

    ``graph``: replay ``fn`` inside a CUDA graph (``do_bench_cudagraph``) so launch overhead and eager autograd's
    CPU time do not hide kernel time; falls back to ``do_bench`` (events, L2 flushed) when capture fails.
    """
    from triton.testing import do_bench, do_bench_cudagraph

    if graph:
        try:
            return float(do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")), "cudagraph"
        except Exception:
            torch.cuda.synchronize()
    return float(do_bench(fn, warmup=max(5.0, rep_ms / 4), rep=rep_ms, return_mode="median")), "do_bench"


def cpu_time(fn: Callable[[], Any], rep_ms: float, min_runs: int = 3, max_runs: int = 50) -> tuple[float, str]:
    """Median wall milliseconds of ``fn`` after one warm-up call, over about ``rep_ms`` of runs."""
    fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_runs or (spent < rep_ms and len(samples) < max_runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
        spent += samples[-1]
    return statistics.median(samples), "wall"


def timed_first_call(fn: Callable[[], Any], device: str) -> tuple[Any, float]:
    """Run ``fn`` once (the call that compiles) and return its result with the seconds it took."""
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start
