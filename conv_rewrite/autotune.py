"""Measure: time one conv and its GEMM form on random tensors of the call's static shape, cached on disk as JSON.

Used only by policy "auto" on devices without a cost model (CPU); the decision itself stays in decide.py.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .normalize import ConvCall
from .replace import FREE, replacement

_BUDGET_S, _WARMUP, _MIN_RUNS, _MAX_RUNS = 0.5, 2, 5, 20


def cache_file() -> Path:
    """``$CONV_REWRITE_CACHE_DIR/autotune.json``, or ``~/.cache/conv_rewrite/autotune.json``."""
    root = os.environ.get("CONV_REWRITE_CACHE_DIR") or Path.home() / ".cache" / "conv_rewrite"
    return Path(root) / "autotune.json"


def _weight_shape(call: ConvCall) -> tuple[int, ...]:
    first, second = (call.in_channels, call.out_channels) if call.transposed else (call.out_channels, call.in_channels)
    return (first, second, *call.kernel)


def _key(call: ConvCall) -> str:
    device = call.device or "cpu"
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    return json.dumps([name, call.dtype, call.input_shape, _weight_shape(call), call.transposed, call.padding])


def _median_ms(fn: Callable[[], torch.Tensor]) -> float:
    for _ in range(_WARMUP):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < _MIN_RUNS or (len(times) < _MAX_RUNS and time.perf_counter() - start < _BUDGET_S / 2):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _benchmark(call: ConvCall) -> tuple[float, float]:
    """(GEMM form ms, conv ms): forward medians on random tensors of the call's shape, dtype and device."""
    dtype, device = getattr(torch, call.dtype), torch.device(call.device or "cpu")
    with unset_fake_temporarily(), torch.no_grad():
        x = torch.randn(call.input_shape, dtype=dtype, device=device)
        w = torch.randn(_weight_shape(call), dtype=dtype, device=device)
        b = torch.randn(call.out_channels, dtype=dtype, device=device)
        padding = [0] * len(call.kernel) if isinstance(call.padding, str) else list(call.padding)
        output_padding = list(call.output_padding) or [0] * len(call.kernel)
        gemm = replacement(call, FREE)
        conv = lambda: torch.convolution(  # noqa: E731
            x, w, b, list(call.stride), padding, list(call.dilation), call.transposed, output_padding, call.groups
        )
        return _median_ms(lambda: gemm(x, w, b)), _median_ms(conv)


def timings(call: ConvCall) -> tuple[float, float]:
    """(GEMM form ms, conv ms) for ``call`` from the cache, measured and stored on a miss."""
    path = cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    key = _key(call)
    if key not in cache:
        cache[key] = list(_benchmark(call))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    gemm_ms, conv_ms = cache[key]
    return gemm_ms, conv_ms
