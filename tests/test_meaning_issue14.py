"""Issue 14, one test per defect: the rewrite keeps values, strides, aliasing and module state, reaches subgraphs,
survives unbatched inputs and symbolic output sizes, and refuses bad arguments at the call, naming them.

fp64 throughout; a program's values must match eager's within TOL and its returned strides exactly.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import (  # noqa: F401 (one_thread: autouse)
    TOL,
    Wrap,
    assert_same_result,
    conv_nodes,
    one_thread,
    shape_propagated,
    trace_leaf,
)
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils.checkpoint import checkpoint

import conv_rewrite
import conv_rewrite.compile
from conv_rewrite import patchify_conv

# Inductor's caches skip the passes on a hit, and with them the reports these tests read
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
    pytest.mark.usefixtures("no_inductor_cache"),
]

FP64 = torch.float64


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=FP64, generator=torch.Generator().manual_seed(seed))


def _backend(inner: str = "aot_eager") -> conv_rewrite.compile.ConvRewriteBackend:
    return conv_rewrite.backend(inner=inner, policy="always")


class Program(nn.Module):
    """A patch conv followed by ``body(y)``: the code under test, traced by every entry point as written."""

    def __init__(self, conv: nn.Module, body: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.conv = conv
        self.body = body

    def forward(self, x: torch.Tensor) -> Any:
        return self.body(self.conv(x))


def _aten_pass_on_export(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    gm = torch.export.export(model, (x,)).module()
    conv_rewrite.compile.AtenConvRewritePass(conv_rewrite.Options(policy="always")).apply(gm)
    return gm


def _rewritten(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    conv_rewrite.rewrite(gm, policy="always")
    return gm


def _convert(model: nn.Module, x: torch.Tensor) -> nn.Module:
    conv_rewrite.convert_(model, policy="always")
    return model


def _convert_then_compile(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    conv_rewrite.convert_(model, policy="always")
    return torch.compile(model, backend="aot_eager")


ENTRY_POINTS: dict[str, Callable[[nn.Module, torch.Tensor], Callable[..., Any]]] = {
    "backend-aot_eager": lambda m, x: torch.compile(m, backend=_backend()),
    "backend-inductor": lambda m, x: torch.compile(m, backend=_backend("inductor")),
    "inductor_options": lambda m, x: torch.compile(m, options=conv_rewrite.inductor_options(policy="always")),
    "rewrite-symbolic_trace": lambda m, x: _rewritten(shape_propagated(torch.fx.symbolic_trace(m), x)),
    "rewrite-make_fx": lambda m, x: _rewritten(make_fx(m)(x)),
    "aten_pass-export": _aten_pass_on_export,
}


def check_program(model: nn.Module, x: torch.Tensor, entry: Callable[[nn.Module, torch.Tensor], Any]) -> None:
    """``model``'s one conv is rewritten by ``entry``, and the result has eager's values and strides."""
    want = copy.deepcopy(model)(x.clone())
    with conv_rewrite.collect_reports() as report:
        got = entry(copy.deepcopy(model), x.clone())(x.clone())
    assert [r.decision for r in report] == ["rewritten"], str(report)
    assert_same_result(got, want)


# --- 1. aliasing: whether reshape/contiguous/flatten alias the conv's output depends on its strides ----------------


def _reshape_mul_(y: torch.Tensor) -> torch.Tensor:
    y.reshape(-1).mul_(2)
    return y.sum((2, 3))


def _contiguous_mul_(y: torch.Tensor) -> torch.Tensor:
    y.contiguous().mul_(2)
    return y.sum((2, 3))


def _flatten_transpose_reshape_add_(y: torch.Tensor) -> torch.Tensor:
    t = y.flatten(2).transpose(1, 2).reshape(-1, 8)
    t.add_(1)
    return y.sum((2, 3))


def _as_strided(y: torch.Tensor) -> torch.Tensor:
    return torch.as_strided(y, (2, 8 * 16), (8 * 16, 1))


ALIASING = {
    "reshape(-1).mul_": _reshape_mul_,
    "contiguous().mul_": _contiguous_mul_,
    "flatten.transpose.reshape.add_": _flatten_transpose_reshape_add_,
    "as_strided": _as_strided,
}
ALIASING_ENTRIES = ["backend-aot_eager", "inductor_options", "rewrite-symbolic_trace", "rewrite-make_fx"]


def _aliasing_cases() -> list[Any]:
    cases = [(name, entry) for name in ALIASING for entry in ALIASING_ENTRIES]
    cases += [("as_strided", "aten_pass-export"), ("reshape(-1).mul_", "backend-inductor")]
    return [pytest.param(name, entry, id=f"{name}-{entry}") for name, entry in cases]


@pytest.mark.parametrize("program,entry", _aliasing_cases())
def test_in_place_ops_and_as_strided_through_aliases_of_the_output_see_the_conv_layout(
    program: str, entry: str, no_inductor_cache: None
):
    torch.manual_seed(0)
    model = Program(nn.Conv2d(3, 8, 2, stride=2).double(), ALIASING[program])
    with torch.no_grad():
        check_program(model, _randn(2, 3, 8, 8), ENTRY_POINTS[entry])


TRAINING = {
    "channels_last-free_view": (
        lambda: nn.Conv2d(3, 8, 2, stride=2),
        lambda: _randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last),
    ),
    "conv1d-length_1-linear": (lambda: nn.Conv1d(3, 8, 2, stride=2), lambda: _randn(2, 3, 2)),
    "out_channels_above_patch-weight_bmm": (lambda: nn.Conv2d(3, 16, 2, stride=2), lambda: _randn(2, 3, 8, 8)),
}
TRAINING_ENTRIES: dict[str, Callable[[nn.Module, torch.Tensor], Callable[..., Any]]] = {
    "backend-aot_eager": ENTRY_POINTS["backend-aot_eager"],
    "rewrite-symbolic_trace": ENTRY_POINTS["rewrite-symbolic_trace"],
    "convert_": _convert,
    "convert_-aot_eager": _convert_then_compile,
}


def _add_in_place_then_tokens(y: torch.Tensor) -> torch.Tensor:
    y.mul_(2)
    return y.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("entry", sorted(TRAINING_ENTRIES))
@pytest.mark.parametrize("case", sorted(TRAINING))
def test_an_in_place_op_on_the_output_in_training_has_eager_values_and_gradients(case: str, entry: str):
    make_conv, make_input = TRAINING[case]
    torch.manual_seed(0)
    model, x = Program(make_conv().double(), _add_in_place_then_tokens), make_input().requires_grad_()
    rewritten = TRAINING_ENTRIES[entry](copy.deepcopy(model), x.detach())
    inputs = [x, *model.parameters()]
    want = model(x)
    want_grads = torch.autograd.grad(want.square().sum(), inputs)
    got = rewritten(x)
    grads = torch.autograd.grad(got.square().sum(), [x, *rewritten.parameters()])
    assert_same_result(got, want, strides=False)
    # AOTAutograd regenerates views of a graph's intermediates with its own strides for size-1 dims (the conv's too):
    # compiled, the strides to match are those of plain torch.compile
    reference = torch.compile(copy.deepcopy(model), backend="aot_eager")(x) if entry.endswith("aot_eager") else want
    assert got.stride() == reference.stride(), f"strides {got.stride()} != {reference.stride()}"
    for g, w in zip(grads, want_grads):
        assert_same_result(g, w, strides=False)


# --- 2. planning runs no user code: module state and hook calls are those of the runs the user asked for ----------


class ConvBatchNorm(nn.Module):
    """A patch conv, then a BatchNorm with a cumulative average (momentum=None) in training mode: its running
    statistics and num_batches_tracked move on every forward that reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 2, stride=2)
        self.bn = nn.BatchNorm2d(8, momentum=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _conv_batchnorm() -> nn.Module:
    torch.manual_seed(0)
    return ConvBatchNorm().double().train()


def _count_calls(module: nn.Module) -> list[str]:
    calls: list[str] = []
    module.register_forward_pre_hook(lambda *_: calls.append("pre"))
    module.register_forward_hook(lambda *_: calls.append("post"))
    return calls


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    """Counters equal; statistics equal within ``atol`` (a GEMM sums in another order than the conv)."""
    assert got.keys() == want.keys()
    for key in want:
        if want[key].is_floating_point():
            assert ((got[key] - want[key]).abs() <= atol).all(), f"{key}: {got[key]} != {want[key]}"
        else:
            assert torch.equal(got[key], want[key]), f"{key}: {got[key]} != {want[key]}"


def test_rewrite_of_a_shape_propagated_trace_leaves_batchnorm_state_and_hooks_alone():
    x = _randn(2, 3, 8, 8)
    model, reference = _conv_batchnorm(), _conv_batchnorm()
    gm = shape_propagated(torch.fx.symbolic_trace(model), x)  # one training-mode forward: the user's
    reference(x)
    calls = _count_calls(gm.get_submodule("bn"))
    before = _state(gm)
    report = conv_rewrite.rewrite(gm, policy="always")
    assert [r.decision for r in report] == ["rewritten"]
    _assert_same_state(_state(gm), before)
    assert calls == []
    # and the rewritten graph's next training step moves the statistics exactly as eager's does
    reference(x)
    gm(x)
    assert calls == ["pre", "post"]
    _assert_same_state(_state(gm), _state(reference), atol=TOL)


def _explain(model: nn.Module, x: torch.Tensor) -> conv_rewrite.Report:
    return conv_rewrite.explain(model, x, policy="always")


def _compile_with(make: Callable[[], Any]) -> Callable[[nn.Module, torch.Tensor], None]:
    def run(model: nn.Module, x: torch.Tensor) -> None:
        with torch.no_grad():
            torch.compile(model, **make())(x)

    return run


STATEFUL_ENTRIES = {
    "explain": _explain,
    "backend-aot_eager": _compile_with(lambda: {"backend": _backend()}),
    "inductor_options": _compile_with(lambda: {"options": conv_rewrite.inductor_options(policy="always")}),
}


@pytest.mark.parametrize("entry", sorted(STATEFUL_ENTRIES))
def test_compiling_or_explaining_changes_batchnorm_state_only_as_one_eager_forward_does(
    entry: str, no_inductor_cache: None
):
    """explain and a compiled call run the model once: its state and hooks move exactly as one eager run's."""
    x = _randn(2, 3, 8, 8)
    model, reference = _conv_batchnorm(), _conv_batchnorm()
    calls, reference_calls = _count_calls(model.bn), _count_calls(reference.bn)
    with torch.no_grad():
        reference(x)
    with conv_rewrite.collect_reports() as report:
        explanation = STATEFUL_ENTRIES[entry](model, x)
    report = explanation if explanation is not None else report
    assert "rewritten" in [r.decision for r in report], str(report)
    assert calls == reference_calls
    _assert_same_state(_state(model), _state(reference), atol=TOL)


# --- 3. strides: the conv's own, size-1 dims included -------------------------------------------------------------

SIZE_ONE = {
    "conv2d-output-1x1": (lambda: nn.Conv2d(3, 8, 4, stride=4), lambda: _randn(2, 3, 4, 4)),
    "conv1d-output-length-1": (lambda: nn.Conv1d(3, 8, 2, stride=2), lambda: _randn(2, 3, 2)),
    "batch-1-channels_last": (
        lambda: nn.Conv2d(3, 6, 2, stride=2),
        lambda: _randn(1, 3, 8, 10).contiguous(memory_format=torch.channels_last),
    ),
}


SIZE_ONE_ENTRIES: dict[str, Callable[[nn.Module, torch.Tensor], Callable[..., Any]]] = {
    "backend-aot_eager": ENTRY_POINTS["backend-aot_eager"],
    "inductor_options": ENTRY_POINTS["inductor_options"],
    "rewrite-symbolic_trace": ENTRY_POINTS["rewrite-symbolic_trace"],
    "rewrite-make_fx": ENTRY_POINTS["rewrite-make_fx"],
    "convert_": _convert,
    "convert_-aot_eager": _convert_then_compile,
}
SIZE_ONE_CASES = [(case, entry) for case in SIZE_ONE for entry in SIZE_ONE_ENTRIES]


@pytest.mark.parametrize("case,entry", SIZE_ONE_CASES, ids=[f"{c}-{e}" for c, e in SIZE_ONE_CASES])
def test_output_with_size_one_dims_has_the_conv_strides(case: str, entry: str, no_inductor_cache: None):
    make_conv, make_input = SIZE_ONE[case]
    torch.manual_seed(0)
    check_program(Program(make_conv().double(), lambda y: y), make_input(), SIZE_ONE_ENTRIES[entry])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "aot_eager"])
def test_convert_of_a_qwen_shaped_conv3d_without_bias_keeps_its_strides(compiled: bool):
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 1280, (2, 14, 14), stride=(2, 14, 14), bias=False).double()
    x = _randn(64, 3, 2, 14, 14)
    with torch.no_grad():
        want = conv(x)
        assert want.stride() == (1280, 1, 1, 1, 1)
        assert [r.decision for r in conv_rewrite.convert_(conv, policy="always")] == ["rewritten"]
        got = (torch.compile(conv, backend="aot_eager") if compiled else conv)(x)
    assert_same_result(got, want)


def test_convert_then_compile_of_conv3d_on_channels_last_3d_keeps_the_conv_strides():
    torch.manual_seed(0)
    conv = nn.Conv3d(8, 4, (1, 2, 2), stride=(1, 2, 2)).double()
    x = _randn(2, 8, 4, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        want = conv(x)
        conv_rewrite.convert_(conv, policy="always")
        got = torch.compile(conv, backend="aot_eager")(x)
    assert_same_result(got, want)


def test_conv_transpose_on_channels_last_through_a_trace_without_meta_keeps_the_conv_strides():
    w, b = _randn(4, 3, 2, 2, seed=1), _randn(3, seed=2)
    x = _randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, w, b, stride=2)

    gm = torch.fx.symbolic_trace(up)  # the weight a constant of the graph, no meta on any node
    (row,) = conv_rewrite.rewrite(gm, policy="always")
    assert row.decision == "rewritten" and conv_nodes(gm) == [], str(row)
    assert_same_result(gm(x), up(x))

    module = nn.ConvTranspose2d(4, 3, 2, stride=2).double()  # weight known from the module: rewritten
    gm = trace_leaf(Wrap(module))
    (row,) = conv_rewrite.rewrite(gm, policy="always")
    assert row.decision == "rewritten" and conv_nodes(gm) == []
    with torch.no_grad():
        assert_same_result(gm(x), module(x))
    assert row.output_layout == "as conv at run time"


# --- 4. unbatched inputs under the default policy, symbolic output_size -------------------------------------------


@pytest.fixture
def default_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default a user gets: policy "auto" (tests/conftest.py sets "always" for the other tests)."""
    monkeypatch.setenv("CONV_REWRITE_POLICY", "auto")


UNBATCHED = {
    "conv2d": (lambda: nn.Conv2d(3, 8, 2, stride=2), lambda: _randn(3, 8, 8)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 3, 2, stride=2), lambda: _randn(4, 5, 5)),
}


def _rewrite_default(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    gm = shape_propagated(trace_leaf(Wrap(model)), x)
    assert len(conv_rewrite.rewrite(gm)) == 1
    return gm


def _backend_default(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    return torch.compile(model, backend=conv_rewrite.backend(inner="aot_eager"))


def _explain_default(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    explanation = conv_rewrite.explain(model, x)
    assert len(explanation) == 1 and explanation[0].reason, str(explanation)
    return model


@pytest.mark.parametrize("entry", [_rewrite_default, _backend_default, _explain_default], ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", sorted(UNBATCHED))
def test_unbatched_input_under_the_default_policy(default_policy: None, case: str, entry: Any):
    make_module, make_input = UNBATCHED[case]
    torch.manual_seed(0)
    module, x = make_module().double(), make_input()
    with torch.no_grad(), conv_rewrite.collect_reports() as report:
        want = module(x)
        got = entry(module, x)(x)
    assert_same_result(got, want)
    if entry is not _explain_default:  # explain returns its rows rather than recording them
        assert report.rows and all(r.reason for r in report), str(report)


class UpWithSkip(nn.Module):
    """A U-Net decoder step: the ConvTranspose is told its output size by the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=skip.shape[2:]) + skip


@pytest.mark.parametrize("entry", ["backend-aot_eager", "inductor_options", "explain"])
def test_conv_transpose_with_symbolic_output_size_is_rewritten_or_skipped_with_a_reason(entry: str):
    torch.manual_seed(0)
    model = UpWithSkip().double()
    x, skip = _randn(2, 4, 5, 6), _randn(2, 3, 10, 12, seed=1)
    with torch.no_grad():
        want = model(x, skip)
        with conv_rewrite.collect_reports() as report:
            if entry == "explain":
                report = conv_rewrite.explain(model, x, skip, dynamic=True, policy="always")
                got = want
            else:
                compile_kwargs = (
                    {"backend": _backend()}
                    if entry == "backend-aot_eager"
                    else {"options": conv_rewrite.inductor_options(policy="always")}
                )
                got = torch.compile(model, dynamic=True, **compile_kwargs)(x, skip)
    assert_same_result(got, want)
    assert len(report) >= 1
    assert all(r.rewritten or r.reason for r in report)


# --- 5. subgraphs: checkpoint and cond ---------------------------------------------------------------------------


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(lambda t: self.conv(t).flatten(2).transpose(1, 2), x, use_reentrant=False)


def test_conv_inside_activation_checkpointing_is_rewritten_with_eager_gradients():
    torch.manual_seed(0)
    model = Checkpointed().double()
    x = _randn(2, 3, 8, 8).requires_grad_()
    want = model(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *model.parameters()])
    with conv_rewrite.collect_reports() as report:
        got = torch.compile(model, backend=_backend())(x)
    grads = torch.autograd.grad(got.square().sum(), [x, *model.parameters()])
    assert [r.decision for r in report] == ["rewritten"], str(report)
    assert_same_result(got, want)
    for g, w in zip(grads, want_grads):
        assert_same_result(g, w)


class Branches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda t: self.conv(t) * 2, lambda t: self.conv(t) - 1, (x,))


def test_conv_inside_both_branches_of_cond_is_rewritten_and_matches_eager():
    torch.manual_seed(0)
    model = Branches().double()
    x = _randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend=_backend())
    with torch.no_grad(), conv_rewrite.collect_reports() as report:
        for sign in (1, -1):
            assert_same_result(compiled(sign * x), model(sign * x))
    assert report.rows and all(r.rewritten for r in report), str(report)
    assert {r.graph.rsplit(" / ", 1)[-1][:10] for r in report} == {"cond_true_", "cond_false"}


# --- 6. errors at the call, naming the argument -------------------------------------------------------------------


def test_patchify_conv_with_a_wrong_channel_count_names_x_and_the_weight():
    with pytest.raises(ValueError, match=r"x has 3 channels but weight \(8, 4, 2, 2\) expects 4"):
        patchify_conv(_randn(2, 3, 8, 8), _randn(8, 4, 2, 2))


@pytest.mark.parametrize("padding", [1, (1,), (1, 0)], ids=["int", "one-element", "per-dim"])
def test_patchify_conv_padding_means_what_it_means_for_conv2d(padding: Any):
    x, w, b = _randn(2, 3, 7, 8), _randn(8, 3, 2, 2, seed=1), _randn(8, seed=2)
    # patchify_conv hands out its free (channels-last) view: values and shape are the conv's, strides its own
    assert_same_result(
        patchify_conv(x, w, b, padding=padding), F.conv2d(x, w, b, stride=2, padding=padding), strides=False
    )


def test_patchify_conv_with_a_list_as_input_is_a_type_error_naming_x():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        patchify_conv(_randn(2, 3, 8, 8).tolist(), _randn(8, 3, 2, 2))


def test_patchify_conv_with_a_half_bias_and_a_float_weight_names_the_bias():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(8, 3, 2, 2)
    with pytest.raises(RuntimeError):  # what the conv does
        F.conv2d(x, w, torch.randn(8).half(), stride=2)
    with pytest.raises(TypeError, match="bias has dtype torch.float16"):
        patchify_conv(x, w, torch.randn(8).half())


@pytest.mark.parametrize(
    "make",
    [
        lambda: conv_rewrite.compile.AtenConvRewritePass({"policy": "bogus"}),
        lambda: conv_rewrite.compile.ConvRewritePass({"policy": "bogus"}),
        lambda: conv_rewrite.compile.ConvRewriteBackend("aot_eager", {"policy": "bogus"}),
    ],
    ids=["AtenConvRewritePass", "ConvRewritePass", "ConvRewriteBackend"],
)
def test_pass_and_backend_classes_check_their_options_at_the_call(make: Callable[[], Any]):
    with pytest.raises(ValueError, match="unknown policy 'bogus'; valid policies: always, auto, never"):
        make()


@pytest.mark.parametrize(
    "call",
    [
        lambda: conv_rewrite.Options(),
        lambda: conv_rewrite.backend(inner="aot_eager"),
        lambda: conv_rewrite.inductor_options(),
        lambda: conv_rewrite.rewrite(torch.fx.symbolic_trace(nn.Conv2d(3, 8, 2, stride=2))),
        lambda: conv_rewrite.convert_(nn.Conv2d(3, 8, 2, stride=2)),
    ],
    ids=["Options", "backend", "inductor_options", "rewrite", "convert_"],
)
def test_a_bad_policy_in_the_environment_names_the_variable_and_the_valid_values(
    monkeypatch: pytest.MonkeyPatch, call: Callable[[], Any]
):
    monkeypatch.setenv("CONV_REWRITE_POLICY", "sometimes")
    with pytest.raises(ValueError, match=r"CONV_REWRITE_POLICY='sometimes'.*valid values: always, auto, never"):
        call()


def test_an_explicit_policy_wins_over_a_bad_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONV_REWRITE_POLICY", "sometimes")
    assert conv_rewrite.Options(policy="never").policy == "never"


def test_an_empty_policy_variable_means_the_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONV_REWRITE_POLICY", "")
    assert conv_rewrite.Options().policy == "auto"


# --- 7. convert_ again: the model ends as the last call selects, and its report says so ----------------------------


class TwoPatchConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 4, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.patch(x))


def _converted(model: nn.Module) -> set[str]:
    return {fqn for fqn, m in model.named_modules() if "_conv_forward" in vars(m)}


def _assert_report_agrees_with_the_model(report: conv_rewrite.Report, model: nn.Module) -> None:
    assert {r.module for r in report.rewritten} == _converted(model)


def test_convert_again_with_policy_never_restores_every_conv_and_reports_it():
    torch.manual_seed(0)
    model, x = TwoPatchConvs().double(), _randn(2, 3, 8, 8)
    want = model(x)
    attributes = {fqn: dict(vars(m)) for fqn, m in model.named_modules()}
    conv_rewrite.convert_(model, policy="always")
    report = conv_rewrite.convert_(model, policy="never")
    _assert_report_agrees_with_the_model(report, model)
    assert [(r.module, r.decision) for r in report] == [("patch", "skipped"), ("head", "skipped")]
    assert all(
        r.reason.startswith("policy 'never'") and r.reason.endswith("the earlier conversion was undone") for r in report
    ), str(report)
    assert {fqn: dict(vars(m)) for fqn, m in model.named_modules()} == attributes
    assert conv_rewrite.restore_(model) == []
    assert_same_result(model(x), want)


def test_convert_again_with_a_filter_that_now_excludes_a_module_restores_only_that_one():
    torch.manual_seed(0)
    model, x = TwoPatchConvs().double(), _randn(2, 3, 8, 8)
    want = model(x)
    conv_rewrite.convert_(model, policy="always")
    report = conv_rewrite.convert_(model, policy="always", filter_fn=lambda m, fqn: fqn == "patch")
    _assert_report_agrees_with_the_model(report, model)
    rows = {r.module: r for r in report}
    assert rows["patch"].rewritten
    assert rows["head"].reason == "excluded by filter_fn; the earlier conversion was undone"
    assert conv_rewrite.restore_(model) == ["patch"]
    assert_same_result(model(x), want)


def test_a_conv_that_was_never_converted_is_skipped_without_mention_of_an_undone_conversion():
    model = TwoPatchConvs().double()
    conv_rewrite.convert_(model, policy="always", filter_fn=lambda m, fqn: fqn == "patch")
    report = conv_rewrite.convert_(model, policy="never")
    _assert_report_agrees_with_the_model(report, model)
    reasons = {r.module: r.reason for r in report}
    assert reasons["patch"].endswith("the earlier conversion was undone")
    assert "undone" not in reasons["head"]


@pytest.mark.parametrize("tracer", ["export", "make_fx"])
def test_convert_then_export_or_make_fx_keeps_the_gradient(tracer: str):
    """make_fx and torch.export inline the forward of the GEMM's autograd.Function: nothing in it may cut the grad."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 2, stride=2).double()
    converted = copy.deepcopy(conv)
    conv_rewrite.convert_(converted, policy="always")
    x = _randn(2, 8, 6, 6).requires_grad_()
    if tracer == "export":
        traced = torch.export.export(converted, (x,)).module()
        params = list(traced.parameters())
        run = traced
    else:
        params = [converted.weight, converted.bias]
        gm = make_fx(lambda x, w, b: torch.func.functional_call(converted, {"weight": w, "bias": b}, (x,)))(x, *params)
        run = lambda x: gm(x, *params)  # noqa: E731
    got = run(x)
    assert got.requires_grad
    grads = torch.autograd.grad(got.square().sum(), [x, *params])
    want = conv(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *conv.parameters()])
    assert_same_result(got, want)
    for g, w in zip(grads, want_grads):
        assert_same_result(g, w, strides=False)
