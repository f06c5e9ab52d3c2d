"""Policy "auto" off CUDA: what is measured, how, and a cache that never fails a compile."""

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.fx
import torch.nn as nn
from torch._dynamo.utils import counters
from torch.fx.passes.shape_prop import ShapeProp

import conv_rewrite
from conv_rewrite import measure as autotune
from conv_rewrite._torch_private import inductor_cpu_timer
from conv_rewrite.decide import Decision, decide
from conv_rewrite.normalize import ConvCall, conv_call

AUTO = conv_rewrite.Options(policy="auto")


def _call() -> ConvCall:
    """The ConvCall of a small patchify Conv2d traced on CPU."""
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(4, 8, 2, stride=2)))
    ShapeProp(gm).propagate(torch.randn(1, 4, 8, 8))
    return conv_call(next(n for n in gm.graph.nodes if n.op == "call_module"), gm)


@pytest.fixture
def measured(monkeypatch):
    """Stubs the measurement with (1 ms GEMM, 2 ms conv); the list holds every call measured."""
    calls = []
    monkeypatch.setattr(autotune, "_benchmark", lambda call: calls.append(call) or (1.0, 2.0))
    return calls


@pytest.fixture
def no_benchmarking(monkeypatch):
    """Fails the test on any timing, ours or Inductor's benchmarker's."""
    monkeypatch.setattr(autotune, "_benchmark", lambda call: pytest.fail("benchmarked"))
    counters.clear()
    yield
    assert not [k for k in counters["inductor"] if k.startswith("benchmarking.")]


# 1. A cache never fails a compile.


@pytest.mark.parametrize("failing", ["mkdir", "write_text"])
def test_read_only_home_measures_and_logs_that_nothing_was_kept(monkeypatch, tmp_path, caplog, measured, failing):
    monkeypatch.delenv("CONV_REWRITE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(Path, failing, read_only)
    with caplog.at_level(logging.DEBUG, logger="conv_rewrite"):
        decision = decide(_call(), AUTO)
    assert decision == Decision(True, "auto: GEMM 1.00 ms vs conv 2.00 ms (cpu, float32)")
    assert len(measured) == 1 and "not written" in caplog.text and "Read-only" in caplog.text


def test_no_home_directory_measures_without_a_cache(monkeypatch, caplog, measured):
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("CONV_REWRITE_CACHE_DIR")
    monkeypatch.setattr(Path, "home", no_home)
    with caplog.at_level(logging.DEBUG, logger="conv_rewrite"):
        assert decide(_call(), AUTO).rewrite and decide(_call(), AUTO).rewrite
    assert len(measured) == 2 and "no home directory" in caplog.text


def test_cache_dir_that_is_a_file_measures_and_leaves_the_file_alone(monkeypatch, tmp_path, caplog, measured):
    a_file = tmp_path / "not_a_dir"
    a_file.write_text("mine")
    monkeypatch.setenv("CONV_REWRITE_CACHE_DIR", str(a_file))
    with caplog.at_level(logging.DEBUG, logger="conv_rewrite"):
        assert decide(_call(), AUTO).rewrite
    assert len(measured) == 1 and a_file.read_text() == "mine" and "not written" in caplog.text


@pytest.mark.parametrize(
    "content",
    ['["a"]', "1", "null", '"text"', "{not json", '{"a": [1.0, 2.0]}', '{"format": 2, "timings": ["a"]}'],
)
def test_cache_file_of_another_shape_is_measured_and_replaced(caplog, measured, content):
    autotune.cache_file().parent.mkdir(parents=True)
    autotune.cache_file().write_text(content)
    with caplog.at_level(logging.DEBUG, logger="conv_rewrite"):
        assert decide(_call(), AUTO).rewrite
    assert len(measured) == 1 and "policy auto cache" in caplog.text
    assert decide(_call(), AUTO).rewrite and len(measured) == 1  # the replaced file is read back


def _spoil_timings(value):
    """``value`` (parsed JSON) with every pair of numbers replaced by a pair that is not two timings."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return ["fast", None]
    if isinstance(value, dict):
        return {k: _spoil_timings(v) for k, v in value.items()}
    return value


def test_cache_entries_that_are_not_two_timings_are_measured_again(caplog, measured):
    decide(_call(), AUTO)
    spoiled = _spoil_timings(json.loads(autotune.cache_file().read_text()))
    autotune.cache_file().write_text(json.dumps(spoiled))
    with caplog.at_level(logging.DEBUG, logger="conv_rewrite"):
        assert decide(_call(), AUTO).reason == "auto: GEMM 1.00 ms vs conv 2.00 ms (cpu, float32)"
    assert len(measured) == 2 and "not two timings" in caplog.text


# 2. Only real tensors on a device that can be synchronized are timed.


def test_meta_tensors_are_not_timed(no_benchmarking):
    row = conv_rewrite.rewrite(_traced_meta(), policy="auto").rows[0]
    assert row.decision == "rewritten" and row.reason == "auto: device meta could not be measured, rewritten"


def _traced_meta() -> torch.fx.GraphModule:
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 64, 14, stride=14).to("meta")))
    ShapeProp(gm).propagate(torch.randn(2, 3, 224, 224, device="meta"))
    return gm


@pytest.mark.parametrize("device", ["xla:0", "privateuseone:0", "mps"])
def test_a_device_that_cannot_be_synchronized_is_not_timed(no_benchmarking, device):
    decision = decide(replace(_call(), device=device), AUTO)
    assert decision == Decision(True, f"auto: device {device} could not be measured, rewritten")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device can be synchronized")
def test_a_cuda_device_this_build_cannot_reach_is_not_timed():
    assert autotune.unmeasurable(replace(_call(), device="cuda:0")) == "device cuda:0 could not be measured"


# 3. No benchmarking in Inductor's deterministic mode.


def test_deterministic_mode_decides_without_benchmarking(no_benchmarking):
    with torch._inductor.config.patch(deterministic=True):
        decision = decide(_call(), AUTO)
    assert decision == Decision(True, "auto: not measured in Inductor's deterministic mode, rewritten")


# 4. Inductor's CPU benchmarker, else a perf_counter loop.


def test_measurement_uses_inductors_cpu_benchmarker(monkeypatch):
    monkeypatch.setattr(autotune, "_BUDGET_S", 0.1)
    counters.clear()
    gemm_ms, conv_ms = autotune._benchmark(_call())
    timed = sum(n for k, n in counters["inductor"].items() if k.endswith(".benchmark_cpu"))
    assert gemm_ms > 0 and conv_ms > 0 and timed >= 2 and timed % 2 == 0


class _OtherBenchmarker:
    def benchmark_cpu(self, fn):
        return 0.0


@pytest.mark.parametrize("benchmarker", [None, _OtherBenchmarker()], ids=["missing", "other signature"])
def test_measurement_falls_back_to_perf_counter_without_inductors_benchmarker(monkeypatch, benchmarker):
    from torch._inductor.runtime import benchmarking

    if benchmarker is None:
        monkeypatch.delattr(benchmarking, "benchmarker")
    else:
        monkeypatch.setattr(benchmarking, "benchmarker", benchmarker)
    monkeypatch.setattr(autotune, "_BUDGET_S", 0.1)
    assert inductor_cpu_timer() is None
    gemm_ms, conv_ms = autotune._benchmark(_call())
    assert gemm_ms > 0 and conv_ms > 0


# 5. Robust on a busy CPU: interleaved rounds, medians, a time budget, a clear margin.


def test_forms_alternate_in_rounds_within_the_budget():
    order = []

    def timer(fn, ms):
        order.append(fn.__name__)
        time.sleep(ms / 1e3)
        return 1.0

    def gemm():
        pass

    def conv():
        pass

    start = time.perf_counter()
    autotune._interleaved_medians((gemm, conv), timer)
    assert order == ["gemm", "conv"] * autotune._ROUNDS
    assert time.perf_counter() - start < autotune._BUDGET_S + 0.05


def test_forms_too_slow_for_a_round_are_timed_by_one_call_each(monkeypatch):
    monkeypatch.setattr(autotune, "_BUDGET_S", 0.03)
    calls = []
    start = time.perf_counter()
    gemm_ms, conv_ms = autotune._interleaved_medians(
        (lambda: calls.append(time.sleep(0.01)), lambda: calls.append(time.sleep(0.02))), lambda fn, ms: pytest.fail()
    )
    assert len(calls) == 2 and 10 <= gemm_ms < conv_ms and time.perf_counter() - start < 0.05


def test_one_slow_round_does_not_move_the_medians():
    ticks = iter([0.1, 0.3, 4.1, 0.3, 0.1, 4.3, 0.1, 0.3, 0.1, 0.3])  # scheduler ticks hit round 2 and round 3
    assert autotune._interleaved_medians((lambda: None, lambda: None), lambda fn, ms: next(ticks)) == (0.1, 0.3)


@pytest.mark.parametrize("gemm_ms,conv_ms", [(0.95, 1.0), (1.0, 0.95)])
def test_no_clear_difference_keeps_the_conv(monkeypatch, gemm_ms, conv_ms):
    monkeypatch.setattr(autotune, "_benchmark", lambda call: (gemm_ms, conv_ms))
    decision = decide(_call(), AUTO)
    assert not decision.rewrite and decision.reason.startswith("auto: no clear difference, GEMM")


def test_measurement_runs_with_the_calling_threads_thread_count(monkeypatch):
    seen = []
    monkeypatch.setattr(autotune, "_benchmark", lambda call: seen.append(torch.get_num_threads()) or (1.0, 2.0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        autotune.timings(_call())
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]


# 6. The cache key holds everything the timing depends on; the file says its format.


@pytest.mark.parametrize(
    "change",
    [
        lambda mp, call: mp.setattr(torch, "__version__", "0.0.0") or call,
        lambda mp, call: mp.setattr(autotune, "_cpu_model", lambda: "another CPU") or call,
        lambda mp, call: replace(call, dtype="float64"),
        lambda mp, call: replace(call, input_shape=(2, 4, 8, 8)),
        lambda mp, call: replace(call, out_channels=16),
        lambda mp, call: replace(call, transposed=True),
        lambda mp, call: replace(call, padding=(1, 1)),
        lambda mp, call: replace(call, padding_mode="reflect"),
        lambda mp, call: replace(call, output_padding=(1, 1)),
    ],
    ids=["torch", "cpu", "dtype", "input", "weight", "transposed", "padding", "padding_mode", "output_padding"],
)
def test_a_change_the_timing_depends_on_is_measured_again(monkeypatch, measured, change):
    call = _call()
    autotune.timings(call)
    autotune.timings(call)
    assert len(measured) == 1
    autotune.timings(change(monkeypatch, call))
    assert len(measured) == 2


def test_another_thread_count_is_measured_again(measured):
    call, threads = _call(), torch.get_num_threads()
    autotune.timings(call)
    try:
        torch.set_num_threads(threads + 1)
        autotune.timings(call)
    finally:
        torch.set_num_threads(threads)
    assert len(measured) == 2


def test_cache_file_says_its_format(measured):
    autotune.timings(_call())
    assert json.loads(autotune.cache_file().read_text())["format"] == autotune._FORMAT
