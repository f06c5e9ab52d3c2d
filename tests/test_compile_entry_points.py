"""Every torch.compile entry point rewrites the patch convs, leaves the others, and matches eager."""

import pytest
import torch
from models import KEPT_CONVS, PATCH_CONVS, MixedConvs, mixed_inputs
from torch._dynamo.backends.common import aot_autograd

import conv_rewrite
import conv_rewrite.compile

# fp32 on CPU: the GEMM sums the same products as the conv in another order; 1e-5 covers that with margin.
ATOL, RTOL = 1e-5, 1e-5


def _assert_close(outs, refs):
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
        assert out.stride() == ref.stride()


def _assert_report(report):
    rewritten = {row.module for row in report.rewritten}
    assert PATCH_CONVS <= rewritten
    skipped = {row.module: row.reason for row in report.skipped}
    for module, reason in KEPT_CONVS.items():
        assert skipped[module] == reason


def _entry_points():
    yield "backend name", lambda m: torch.compile(m, backend="conv_rewrite")
    yield "backend(inner=aot_eager)", lambda m: torch.compile(m, backend=conv_rewrite.backend(inner="aot_eager"))
    yield "backend(inner=eager)", lambda m: torch.compile(m, backend=conv_rewrite.backend(inner="eager"))
    yield "backend(inner=callable)", lambda m: torch.compile(m, backend=conv_rewrite.backend(inner=lambda gm, ex: gm))
    yield "inductor_options", lambda m: torch.compile(m, options=conv_rewrite.inductor_options())


@pytest.mark.parametrize("name,compile_fn", list(_entry_points()), ids=[n for n, _ in _entry_points()])
def test_entry_point_matches_eager_and_reports(name, compile_fn, no_inductor_cache):
    model = MixedConvs()
    inputs = mixed_inputs()
    with conv_rewrite.collect_reports() as report:
        outs = compile_fn(model)(*inputs)
    _assert_close(outs, model(*inputs))
    _assert_report(report)


def test_inductor_pass_context_manager_scopes_the_rewrite(no_inductor_cache):
    model = MixedConvs()
    inputs = mixed_inputs()
    with conv_rewrite.collect_reports() as report:
        with conv_rewrite.compile.inductor_pass():
            outs = torch.compile(model)(*inputs)
    _assert_close(outs, model(*inputs))
    _assert_report(report)
    torch._dynamo.reset()
    with conv_rewrite.collect_reports() as after:
        torch.compile(model)(*inputs)
    assert len(after) == 0


def test_install_inductor_pass_is_global_until_uninstalled(no_inductor_cache):
    model = MixedConvs()
    inputs = mixed_inputs()
    before = torch._inductor.config.pre_grad_custom_pass
    conv_rewrite.compile.install_inductor_pass()
    try:
        with conv_rewrite.collect_reports() as report:
            outs = torch.compile(model)(*inputs)
    finally:
        conv_rewrite.compile.uninstall_inductor_pass()
    assert torch._inductor.config.pre_grad_custom_pass is before
    _assert_close(outs, model(*inputs))
    _assert_report(report)


def test_backend_report_accumulates_on_the_instance():
    be = conv_rewrite.backend(inner="eager")
    torch.compile(MixedConvs(), backend=be)(*mixed_inputs())
    assert {row.module for row in be.report.rewritten} == PATCH_CONVS
    assert "aot_eager" in repr(conv_rewrite.backend(inner="aot_eager"))


def test_summary_line_is_logged_per_graph(caplog):
    with caplog.at_level("INFO", logger="conv_rewrite"):
        torch.compile(MixedConvs(), backend=conv_rewrite.backend(inner="eager"))(*mixed_inputs())
    lines = [r.getMessage() for r in caplog.records if r.name == "conv_rewrite"]
    assert lines == ["dynamo graph " + lines[0].split("dynamo graph ")[1]]
    assert "2 of 5 conv(s) rewritten, 3 skipped" in lines[0]


def test_bad_options_and_inner_raise_listing_valid_values():
    with pytest.raises(ValueError, match="valid options: policy"):
        conv_rewrite.backend(polcy="always")
    with pytest.raises(ValueError, match="valid policies: always, auto, never"):
        conv_rewrite.inductor_options(policy="sometimes")
    with pytest.raises(ValueError, match="valid backends: .*aot_eager"):
        conv_rewrite.backend(inner="no_such_backend")
    with pytest.raises(TypeError, match="inner must be a backend name or a callable"):
        conv_rewrite.backend(inner=3)


def test_policy_never_reports_without_rewriting():
    graphs = []
    be = conv_rewrite.backend(inner=lambda gm, ex: graphs.append(gm) or gm, policy="never")
    model = MixedConvs()
    torch.compile(model, backend=be)(*mixed_inputs())
    assert not be.report.rewritten
    assert all(row.reason.startswith("policy 'never'") for row in be.report if row.module in PATCH_CONVS)
    assert sum(n.target is torch.conv3d for g in graphs for n in g.graph.nodes) == 1


def test_aot_graphs_hold_no_convolution_for_patch_convs():
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    be = conv_rewrite.backend(inner=aot_autograd(fw_compiler=capture, bw_compiler=capture))
    model = MixedConvs()
    torch.compile(model, backend=be)(*mixed_inputs())
    convs = [n for g in graphs for n in g.graph.nodes if n.target is torch.ops.aten.convolution.default]
    assert len(convs) == len(KEPT_CONVS)


def test_backend_passes_mode_and_options_to_inductor(monkeypatch):
    seen = []
    real = conv_rewrite._torch_private.inductor_compiler

    def spy(mode, options):
        seen.append((mode, options))
        return real(mode, options)

    monkeypatch.setattr(conv_rewrite._torch_private, "inductor_compiler", spy)
    model = MixedConvs()
    compiled = torch.compile(model, backend="conv_rewrite", options={"epilogue_fusion": False})
    inputs = mixed_inputs()
    _assert_close(compiled(*inputs), model(*inputs))
    assert seen == [(None, {"epilogue_fusion": False})]
