"""conv_rewrite as a good citizen of torch.compile and of the program around it (issue 15): no compiler loaded on
import, the user's own Inductor passes kept, one report row per conv and compile, reports per thread, full module
paths, and no guard of the rewrite's own."""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.pattern_matcher import PatternMatcherPass
from torch.fx.experimental.proxy_tensor import make_fx

import conv_rewrite
import conv_rewrite.compile
import conv_rewrite.record
from conv_rewrite.normalize import ATEN_TARGETS

ROOT = Path(__file__).resolve().parents[1]


class FiveConvs(nn.Module):
    """Five convs in a row, two of them patchify (``patch`` and ``head``)."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.padded = nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 2, stride=2, groups=2)
        self.overlapping = nn.Conv2d(8, 8, 3, stride=2)
        self.head = nn.Conv2d(8, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.overlapping(self.grouped(self.padded(self.patch(x)))))


GRAPH_ORDER = ["patch", "padded", "grouped", "overlapping", "head"]
PATCH_CONVS = {"patch", "head"}


def _input() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32)


def _modules(report) -> list:
    return [row.module for row in report]


@pytest.fixture
def passes_run():
    """Inductor runs the custom passes on every compile: its FX graph and AOTAutograd caches (a hit skips them) are
    off; its kernel cache stays on, so the tests pay for no C++ compile they paid for before."""
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        yield


class _UserPass(CustomGraphPass):
    """A user's own CustomGraphPass, with a uuid, that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.calls += 1

    def uuid(self) -> str:
        return "a user's pass"


def _user_function():
    """A user's own pass as a plain function, with its calls."""
    calls = []

    def user_pass(graph: torch.fx.Graph) -> None:
        calls.append(graph)

    return user_pass, calls


# -- importing the package loads no compiler ------------------------------------------------------------------------

IMPORT_PROBE = textwrap.dedent(
    """
    import json, sys
    import torch
    import conv_rewrite
    conv_rewrite.convert_, conv_rewrite.patchify_conv, conv_rewrite.rewrite, conv_rewrite.Options

    def compiler():
        return sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor")))

    core = compiler()
    conv_rewrite.backend
    print(json.dumps({"core": core, "backend": compiler()}))
    """
)


def test_import_and_the_core_entry_points_load_no_compiler():
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["core"] == []
    assert "torch._dynamo" in loaded["backend"]


def test_all_lists_every_lazily_imported_public_name():
    assert conv_rewrite.__all__ == sorted(conv_rewrite._PUBLIC)


PRIVATE_TORCH = re.compile(r"\btorch\._(?!_)|\bnn(?:\.\w+)*\._[A-Za-z]")


def test_only_torch_private_uses_private_torch():
    package = ROOT / "conv_rewrite"
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "_torch_private.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_TORCH.search(line)
    ]
    assert offenders == []


# -- the user's own Inductor passes keep running beside ours ---------------------------------------------------------


def test_user_passes_keep_running_with_install_inductor_pass(passes_run):
    config = torch._inductor.config
    pre, (post, post_calls) = _UserPass(), _user_function()
    with config.patch(pre_grad_custom_pass=pre, post_grad_custom_pre_pass=post):
        conv_rewrite.compile.install_inductor_pass()
        try:
            with conv_rewrite.collect_reports() as report:
                torch.compile(FiveConvs())(_input())
        finally:
            conv_rewrite.compile.uninstall_inductor_pass()
        assert config.pre_grad_custom_pass is pre
        assert config.post_grad_custom_pre_pass is post
    assert pre.calls >= 1 and post_calls
    assert {row.module for row in report.rewritten} == PATCH_CONVS


def test_user_passes_keep_running_with_inductor_options(passes_run):
    config = torch._inductor.config
    (pre, pre_calls), post = _user_function(), _UserPass()
    with config.patch(pre_grad_custom_pass=pre, post_grad_custom_pre_pass=post):
        with conv_rewrite.collect_reports() as report:
            torch.compile(FiveConvs(), options=conv_rewrite.inductor_options())(_input())
        assert config.pre_grad_custom_pass is pre
        assert config.post_grad_custom_pre_pass is post
    assert pre_calls and post.calls >= 1
    assert {row.module for row in report.rewritten} == PATCH_CONVS


def test_installing_twice_runs_the_rewrite_once_and_uninstall_restores_the_config(passes_run):
    config = torch._inductor.config
    before = (config.pre_grad_custom_pass, config.post_grad_custom_pre_pass)
    conv_rewrite.compile.install_inductor_pass()
    conv_rewrite.compile.install_inductor_pass()
    try:
        with conv_rewrite.collect_reports() as report:
            torch.compile(FiveConvs())(_input())
    finally:
        conv_rewrite.compile.uninstall_inductor_pass()
    assert (config.pre_grad_custom_pass, config.post_grad_custom_pre_pass) == before
    assert config.pre_grad_custom_pass is before[0] and config.post_grad_custom_pre_pass is before[1]
    assert _modules(report) == GRAPH_ORDER


# -- one row per conv and compile, in graph order ---------------------------------------------------------------------


def test_inductor_options_reports_each_conv_once_in_graph_order(passes_run):
    model, x = FiveConvs(), _input()
    with conv_rewrite.collect_reports() as report:
        out = torch.compile(model, options=conv_rewrite.inductor_options())(x)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    assert _modules(report) == GRAPH_ORDER
    assert {row.module for row in report.rewritten} == PATCH_CONVS
    assert _modules(conv_rewrite.record.last_report()) == GRAPH_ORDER


def test_aten_pass_reports_an_exported_graph_in_graph_order():
    gm = torch.export.export(FiveConvs(), (_input(),)).run_decompositions().module()
    report = conv_rewrite.compile.AtenConvRewritePass().apply(gm)
    assert _modules(report) == GRAPH_ORDER
    assert {row.module for row in report.rewritten} == PATCH_CONVS


def test_aten_pass_on_a_make_fx_graph_matches_eager():
    model, x = FiveConvs(), _input()
    gm = make_fx(model)(x)
    report = conv_rewrite.compile.AtenConvRewritePass().apply(gm)
    assert (len(report), len(report.rewritten)) == (5, 2)
    convolutions = [n for n in gm.graph.nodes if n.target is torch.ops.aten.convolution.default]
    assert len(convolutions) == 3
    torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_aten_pattern_is_registered_once(monkeypatch):
    applied = []
    apply = PatternMatcherPass.apply
    monkeypatch.setattr(PatternMatcherPass, "apply", lambda self, graph: applied.append(self) or apply(self, graph))
    for _ in range(2):
        gm = torch.export.export(nn.Conv2d(3, 4, 2, stride=2), (_input(),)).run_decompositions().module()
        assert len(conv_rewrite.compile.AtenConvRewritePass().apply(gm).rewritten) == 1
    assert len(applied) == 2 and applied[0] is applied[1]
    # one pattern per ATen conv overload, registered by the first apply only
    assert sum(len(entries) for entries in applied[0].patterns.values()) == len(ATEN_TARGETS)


# -- reports per thread, and bounded ---------------------------------------------------------------------------------


def test_collect_reports_and_last_report_ignore_other_threads():
    conv_rewrite.rewrite(torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 2, stride=2))))
    mine = conv_rewrite.record.last_report()
    theirs = {}

    def compile_elsewhere():
        with conv_rewrite.collect_reports() as report:
            conv_rewrite.rewrite(torch.fx.symbolic_trace(FiveConvs()))
            torch.compile(FiveConvs(), backend=conv_rewrite.backend(inner="eager"))(_input())
        theirs["report"] = report

    with conv_rewrite.collect_reports() as report:
        thread = threading.Thread(target=compile_elsewhere)
        thread.start()
        thread.join()
    assert len(theirs["report"]) == 10
    assert len(report) == 0
    assert conv_rewrite.record.last_report() is mine


def test_explain_rows_stay_out_of_open_collect_reports():
    with conv_rewrite.collect_reports() as report:
        explanation = conv_rewrite.explain(FiveConvs(), _input())
    assert len(explanation) == 5
    assert len(report) == 0


def test_backend_report_keeps_only_the_last_graphs(monkeypatch):
    monkeypatch.setattr(conv_rewrite.compile.ConvRewriteBackend, "MAX_GRAPHS", 3, raising=False)
    be = conv_rewrite.backend(inner="eager")
    compiled = torch.compile(nn.Conv2d(3, 4, 2, stride=2), backend=be, dynamic=False)
    sizes = [4, 6, 8, 10, 12, 14]
    for size in sizes:
        compiled(torch.randn(1, 3, size, size))
    assert [row.input_shape[-1] for row in be.report] == sizes[-3:]


# -- module paths in the user's model ---------------------------------------------------------------------------------


class _Tower(nn.Module):
    """A patch conv behind a graph break: Dynamo compiles this forward as a frame of its own."""

    def __init__(self, out_channels: int = 8):
        super().__init__()
        self.proj = nn.Conv2d(3, out_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("graph break")
        return self.proj(x)


class _TwoTowers(nn.Module):
    def __init__(self, out_a: int, out_b: int):
        super().__init__()
        self.vision_a = _Tower(out_a)
        self.vision_b = _Tower(out_b)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vision_a(x), self.vision_b(x)


def _compiled_rows(model: nn.Module) -> list:
    be = conv_rewrite.backend(inner="eager")
    torch.compile(model, backend=be)(_input())
    return _modules(be.report)


def test_convs_behind_a_graph_break_are_named_by_their_path_in_the_model():
    assert sorted(_compiled_rows(_TwoTowers(8, 6))) == ["vision_a.proj", "vision_b.proj"]


def test_identical_towers_share_one_graph_named_by_a_full_path():
    """Dynamo compiles the towers' forward once and runs vision_b on vision_a's graph (no guard on which module it
    is): one graph, one row, named after the module it was compiled for."""
    rows = _compiled_rows(_TwoTowers(8, 8))
    assert rows and set(rows) <= {"vision_a.proj", "vision_b.proj"}


def test_a_submodule_compiled_after_a_graph_break_keeps_its_parent_in_the_path():
    class Pixtral(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = _Tower()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x)

    assert _compiled_rows(Pixtral()) == ["m.proj"]


def test_a_data_parallel_wrapper_adds_nothing_to_the_path():
    assert sorted(_compiled_rows(nn.DataParallel(_TwoTowers(8, 6)))) == ["vision_a.proj", "vision_b.proj"]


def test_a_lazy_conv_is_never_reported_with_k_zero():
    (row,) = conv_rewrite.convert_(nn.Sequential(nn.LazyConv2d(8, 2, stride=2)))
    assert row.rewritten and row.gemm[1] is None  # before its first call the input's channels are not known
    be = conv_rewrite.backend(inner="eager")
    torch.compile(nn.Sequential(nn.LazyConv2d(8, 2, stride=2)), backend=be)(_input())
    assert [row.gemm for row in be.report] == [(256, 12, 8)]


# -- no guard of the rewrite's own -----------------------------------------------------------------------------------


def _graphs_over_parities(inner, forward=None) -> int:
    """Graphs compiled for a stride-2 conv (``forward(conv, x)``, by default the module) over heights and widths of
    both parities under dynamic=True; each result is checked against the conv, strides included."""
    conv = nn.Conv2d(3, 4, 2, stride=2)
    graphs = 0

    def counting(gm, example_inputs, **kwargs):
        nonlocal graphs
        graphs += 1
        return inner(gm, example_inputs, **kwargs)

    torch._dynamo.reset()
    compiled = torch.compile(functools.partial(forward, conv) if forward else conv, backend=counting, dynamic=True)
    for height in (8, 9, 10, 11):
        for width in (8, 9, 10, 11):
            x = torch.randn(1, 3, height, width)
            got, expected = compiled(x), conv(x)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
            assert forward is None or got.stride() == expected.stride()
    return graphs


def test_dynamic_sizes_of_both_parities_compile_no_more_graphs_than_plain_torch_compile():
    plain = _graphs_over_parities(lambda gm, example_inputs, **kwargs: gm.forward)
    assert _graphs_over_parities(conv_rewrite.backend(inner="eager")) <= plain


def test_the_patchify_functions_add_no_guard_in_a_compiled_caller():
    """Dynamo passes a symbolic size off as an int: the functions must not take it for one (a guard per parity)."""
    from conv_rewrite.patchify import patchify_conv_like_conv

    def plain(gm, example_inputs, **kwargs):
        return gm.forward

    expected = _graphs_over_parities(plain, lambda conv, x: conv(x))
    like_conv = _graphs_over_parities(plain, lambda conv, x: patchify_conv_like_conv(x, conv.weight, conv.bias))
    contiguous = _graphs_over_parities(
        plain, lambda conv, x: conv_rewrite.patchify_conv(x, conv.weight, conv.bias, contiguous_output=True)
    )
    assert like_conv <= expected and contiguous <= expected


def _frames_over_lengths(forward) -> int:
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(forward, backend=counter, dynamic=True)
    for length in (9, 10, 12, 13, 14, 15):
        x = torch.randn(2, 3, length, requires_grad=True)
        compiled(x).sum().backward()
    return counter.frame_count


def test_a_conv1d_of_dynamic_length_compiles_no_more_frames_than_the_conv():
    """Lengths of every remainder modulo the kernel: converted, and patchify_conv called directly (its backward
    traced by Dynamo), padded or not."""
    import torch._dynamo.testing

    torch.manual_seed(0)
    conv = nn.Conv1d(3, 8, 3, stride=3, padding=1, padding_mode="reflect")
    expected = _frames_over_lengths(lambda x: conv(x))
    converted = nn.Conv1d(3, 8, 3, stride=3)
    conv_rewrite.convert_(converted, policy="always")
    plain = nn.Conv1d(3, 8, 3, stride=3)
    assert _frames_over_lengths(lambda x: converted(x)) <= _frames_over_lengths(lambda x: plain(x))
    direct = _frames_over_lengths(
        lambda x: conv_rewrite.patchify_conv(
            x, conv.weight, conv.bias, contiguous_output=True, padding=1, padding_mode="reflect"
        )
    )
    assert direct <= expected
