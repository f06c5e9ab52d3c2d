"""Measure: time one conv and its GEMM form at compile time (policy "auto" off CUDA), cached on disk as JSON.

Only real tensors on a device that can be synchronized are timed; a cache that cannot be used costs a measurement,
never a compile.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ._torch_private import inductor_cpu_timer, inductor_deterministic, real_tensors
from .normalize import ConvCall
from .replace import FREE, replacement

log = logging.getLogger("conv_rewrite")

_BUDGET_S = 0.3  # about the most one conv's measurement takes (a form slower than that is timed by one call)
_ROUNDS = 5  # rounds of GEMM form then conv, each timed for its share of the budget; medians over the rounds
_FORMAT = 2  # of the cache file: {"format": _FORMAT, "timings": {key: [GEMM ms, conv ms]}}

_Timer = Callable[[Callable[[], Any], float], float]  # (fn, ms) -> median ms of fn run for about ms


def cache_file() -> Path | None:
    """``$CONV_REWRITE_CACHE_DIR/autotune.json``, or ``~/.cache/conv_rewrite/autotune.json``; None without a home."""
    root = os.environ.get("CONV_REWRITE_CACHE_DIR")
    if not root:
        try:
            root = str(Path.home() / ".cache" / "conv_rewrite")
        except RuntimeError:
            return None
    return Path(root) / "autotune.json"


def _synchronize(device: str | None) -> Callable[[], None] | None:
    """What waits for ``device`` to finish its work; None for a device that cannot be timed (meta, a fake one)."""
    kind = device.partition(":")[0] if device else None
    if kind == "cpu":
        return lambda: None
    if kind == "cuda" and torch.cuda.is_available():
        return torch.cuda.synchronize
    return None


def unmeasurable(call: ConvCall) -> str | None:
    """Why ``call`` is not measured here, or None when it is."""
    if inductor_deterministic():
        return "not measured in Inductor's deterministic mode"
    if _synchronize(call.device) is None:
        return f"device {call.device} could not be measured"
    if not (isinstance(call.in_channels, int) and isinstance(call.out_channels, int)):
        return "channel counts not static"
    return None


@functools.cache
def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else platform.processor() or platform.machine())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _channels(call: ConvCall) -> tuple[int, int]:
    """(in, out) channels of a conv ``decide.qualifies`` accepted: its weight's shape is known."""
    if not (isinstance(call.in_channels, int) and isinstance(call.out_channels, int)):
        raise TypeError(f"conv {call.node}: channels {call.in_channels} -> {call.out_channels} are not static ints")
    return call.in_channels, call.out_channels


def _weight_shape(call: ConvCall) -> tuple[int, ...]:
    in_channels, out_channels = _channels(call)
    first, second = (in_channels, out_channels) if call.transposed else (out_channels, in_channels)
    return (first, second, *call.known_kernel)


def _key(call: ConvCall, threads: int) -> str:
    """Everything the timings depend on: software, machine, and the conv's shapes and arguments."""
    device = call.device or "cpu"
    return json.dumps(
        {
            "torch": torch.__version__,
            "threads": threads,
            "cpu": _cpu_model(),
            "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
            "dtype": call.dtype,
            "input": call.input_shape,
            "weight": _weight_shape(call),
            "transposed": call.transposed,
            "stride": call.stride,
            "padding": call.padding,
            "padding_mode": call.padding_mode,
            "output_padding": call.output_padding,
        },
        sort_keys=True,
    )


def _perf_counter_timer(fn: Callable[[], Any], ms: float) -> float:
    """Median ms of ``fn`` run for about ``ms`` after one warm-up call: where Inductor has no CPU timer."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < ms / 1e3:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _once_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _interleaved_medians(forms: tuple[Callable[[], Any], Callable[[], Any]], timer: _Timer) -> tuple[float, float]:
    """Each form's median ms over up to _ROUNDS rounds of A then B, all within about _BUDGET_S.

    Interleaving spreads a busy machine's slow spells (scheduler ticks of ~4 ms) over both forms. A first call of
    each warms it up and tells whether another round fits the budget (a timer call runs a form at least twice);
    where none does, those first calls are the timings.
    """
    deadline = time.perf_counter() + _BUDGET_S
    first = (_once_ms(forms[0]), _once_ms(forms[1]))
    samples: tuple[list[float], list[float]] = ([], [])
    for done in range(_ROUNDS):
        left_ms = (deadline - time.perf_counter()) * 1e3
        if left_ms < 2 * sum(first):
            break
        slot_ms = left_ms / (2 * (_ROUNDS - done))
        for times, fn in zip(samples, forms):
            times.append(timer(fn, slot_ms))
    if not samples[0]:
        return first
    return statistics.median(samples[0]), statistics.median(samples[1])


def _benchmark(call: ConvCall) -> tuple[float, float]:
    """(GEMM form ms, conv ms): forward medians on random tensors of the call's shape, dtype and device.

    Runs in the calling thread, with its torch.get_num_threads() (which the cache key holds).
    """
    # decide._auto measures only a conv whose input (shape, dtype, device) the graph records, on a device
    # ``unmeasurable`` accepts.
    assert call.input_shape is not None and call.dtype is not None and call.device is not None
    dtype, device = getattr(torch, call.dtype), torch.device(call.device)
    sync = _synchronize(call.device)
    assert sync is not None
    kernel = call.known_kernel
    shape = tuple(call.input_shape)
    if len(shape) == len(kernel) + 1:  # unbatched: torch.convolution takes a batch
        shape = (1, *shape)
    with real_tensors(), torch.no_grad():
        x = torch.randn(shape, dtype=dtype, device=device)
        w = torch.randn(_weight_shape(call), dtype=dtype, device=device)
        b = torch.randn(_channels(call)[1], dtype=dtype, device=device)
        padding = [0] * len(kernel) if isinstance(call.padding, str) else list(call.padding)
        output_padding = list(call.output_padding) or [0] * len(kernel)
        gemm = replacement(call, FREE)

        def gemm_form() -> None:
            gemm(x, w, b)
            sync()

        def conv_form() -> None:
            torch.convolution(
                x, w, b, list(call.stride), padding, list(call.dilation), call.transposed, output_padding, call.groups
            )
            sync()

        return _interleaved_medians((gemm_form, conv_form), inductor_cpu_timer() or _perf_counter_timer)


def _timing_pair(value: Any) -> tuple[float, float] | None:
    """A cache entry as (GEMM ms, conv ms), None unless it is two finite non-negative numbers."""
    if not (isinstance(value, list) and len(value) == 2):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in value):
        return None
    return float(value[0]), float(value[1])


def _load(path: Path) -> dict[str, Any]:
    """The cached timings by key; empty when the file is missing, unreadable, or not this _FORMAT."""
    try:
        cache = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.debug("policy auto cache %s not read (%s): measuring", path, e)
        return {}
    if not (isinstance(cache, dict) and cache.get("format") == _FORMAT and isinstance(cache.get("timings"), dict)):
        log.debug("policy auto cache %s is not format %d: measuring, then replacing it", path, _FORMAT)
        return {}
    return cache["timings"]


def _store(path: Path, timings: dict[str, Any]) -> None:
    """Write the cache atomically (a temporary file renamed over it); a failure is logged, not raised."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"format": _FORMAT, "timings": timings}, indent=1))
        tmp.replace(path)
    except OSError as e:
        log.debug("policy auto cache %s not written (%s): the timings are not kept", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()


def timings(call: ConvCall) -> tuple[float, float]:
    """(GEMM form ms, conv ms) for ``call`` from the cache, measured and stored on a miss.

    Only for a call ``unmeasurable`` accepts.
    """
    key = _key(call, torch.get_num_threads())
    path = cache_file()
    cache = _load(path) if path is not None else {}
    cached = _timing_pair(cache.get(key))
    if cached is not None:
        return cached
    if key in cache:
        log.debug("policy auto cache entry %s is not two timings: measuring again", key)
    measured = _benchmark(call)
    if path is None:
        log.debug("policy auto cache: no home directory and no CONV_REWRITE_CACHE_DIR: the timings are not kept")
    else:
        _store(path, {**cache, key: list(measured)})
    return measured
