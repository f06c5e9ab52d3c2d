"""Every reason a conv is not rewritten is reported, and the conv node is left exactly as it was.

For each skip: the report row's fields (node, module path, op, dims, input shape, kernel, stride, padding, dilation,
groups, transposed, decision, reason), the graph's nodes and generated code unchanged, and the output bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import Wrap, aten, conv_nodes, one_thread, shape_propagated, trace_leaf  # noqa: F401 (autouse)
from torch.fx.experimental.proxy_tensor import make_fx

import conv_rewrite

FP64 = torch.float64
ROW_FIELDS = (
    "node",
    "module",
    "op",
    "dims",
    "input_shape",
    "kernel",
    "stride",
    "padding",
    "dilation",
    "groups",
    "transposed",
    "decision",
    "reason",
)


def _snapshot(gm: torch.fx.GraphModule) -> list[tuple[Any, ...]]:
    return [(n.name, n.op, n.target, repr(n.args), repr(n.kwargs)) for n in gm.graph.nodes]


def rewrite_expecting_skip(gm: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...], **options: Any) -> dict:
    """Rewrite ``gm``: its one conv must be skipped and untouched. Returns the report row's fields."""
    nodes, code = _snapshot(gm), gm.code
    assert len(conv_nodes(gm)) == 1
    with torch.no_grad():
        want = gm(*inputs)
        report = conv_rewrite.rewrite(gm, **options)
        got = gm(*inputs)
    assert _snapshot(gm) == nodes and gm.code == code
    assert torch.equal(got, want)
    (row,) = report
    assert not row.rewritten and row.output_layout is None and row.gemm is None
    assert report.skipped == [row] and report.rewritten == []
    return {f: getattr(row, f) for f in ROW_FIELDS}


class OverridingConv(nn.Conv2d):
    """Its forward does more than the conv: rewriting the module would drop that."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def _row(
    op: str,
    dims: int,
    input_shape: Any,
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    transposed: bool,
    reason: str,
    node: str = "blocks_0_proj",
    module: str | None = "blocks.0.proj",
) -> dict:
    return dict(
        node=node,
        module=module,
        op=op,
        dims=dims,
        input_shape=input_shape,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        transposed=transposed,
        decision="skipped",
        reason=reason,
    )


X2, X3 = (2, 4, 8, 9), (2, 4, 4, 8, 9)

# name -> (conv module, input shape, expected row for the call_module form)
MODULE_CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], dict]] = {
    "stride != kernel": (
        lambda: nn.Conv3d(4, 4, 2, stride=(1, 2, 2)),
        X3,
        _row(
            "nn.Conv3d",
            3,
            X3,
            (2, 2, 2),
            (1, 2, 2),
            (0, 0, 0),
            (1, 1, 1),
            1,
            False,
            "stride (1, 2, 2) != kernel (2, 2, 2)",
        ),
    ),
    "padding and stride != kernel": (
        lambda: nn.Conv2d(4, 4, 3, padding=1),
        X2,
        _row("nn.Conv2d", 2, X2, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, "stride (1, 1) != kernel (3, 3)"),
    ),
    "groups": (
        lambda: nn.Conv2d(4, 4, 2, stride=2, groups=4),
        X2,
        _row("nn.Conv2d", 2, X2, (2, 2), (2, 2), (0, 0), (1, 1), 4, False, "groups 4"),
    ),
    "dilation": (
        lambda: nn.Conv2d(4, 4, 2, stride=2, dilation=2),
        X2,
        _row("nn.Conv2d", 2, X2, (2, 2), (2, 2), (0, 0), (2, 2), 1, False, "dilation (2, 2)"),
    ),
    "transposed with stride != kernel": (
        lambda: nn.ConvTranspose2d(4, 4, 3, stride=2),
        X2,
        _row("nn.ConvTranspose2d", 2, X2, (3, 3), (2, 2), (0, 0), (1, 1), 1, True, "stride (2, 2) != kernel (3, 3)"),
    ),
    "transposed with groups": (
        lambda: nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
        X2,
        _row("nn.ConvTranspose2d", 2, X2, (2, 2), (2, 2), (0, 0), (1, 1), 2, True, "groups 2"),
    ),
    "padding same": (
        lambda: nn.Conv2d(4, 4, 3, padding="same"),
        X2,
        _row("nn.Conv2d", 2, X2, (3, 3), (1, 1), "same", (1, 1), 1, False, "padding 'same'"),
    ),
    "overridden forward": (
        lambda: OverridingConv(4, 4, 2, stride=2),
        X2,
        _row("nn.OverridingConv", 2, X2, (2, 2), (2, 2), (0, 0), (1, 1), 1, False, "OverridingConv overrides forward"),
    ),
}


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_conv_is_skipped_with_its_reason(case: str) -> None:
    make, shape, expected = MODULE_CASES[case]
    model = Wrap(make().double())
    x = torch.randn(shape, dtype=FP64)
    gm = shape_propagated(trace_leaf(model), x)
    assert rewrite_expecting_skip(gm, (x,)) == expected


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_conv_reason_does_not_need_shapes(case: str) -> None:
    make, shape, expected = MODULE_CASES[case]
    model = Wrap(make().double())
    row = rewrite_expecting_skip(trace_leaf(model), (torch.randn(shape, dtype=FP64),))
    assert row == {**expected, "input_shape": None}


# The same convs at ATen level: the same reasons, read from the op's arguments instead of the module.
ATEN_CASES = [
    "stride != kernel",
    "padding and stride != kernel",
    "groups",
    "dilation",
    "transposed with stride != kernel",
]


@pytest.mark.parametrize("form", ["export", "make_fx"])
@pytest.mark.parametrize("case", ATEN_CASES)
def test_aten_conv_is_skipped_with_the_same_reason(case: str, form: str) -> None:
    make, shape, expected = MODULE_CASES[case]
    model = Wrap(make().double())
    x = torch.randn(shape, dtype=FP64)
    if form == "export":
        gm = torch.export.export(model, (x,)).module()
        name = "conv_transpose2d" if expected["transposed"] else f"conv{expected['dims']}d"
        op = f"aten.{name}.input" if expected["transposed"] else f"aten.{name}.default"
        where = dict(node=name, op=op)
    else:
        gm = make_fx(model)(x)
        where = dict(node="convolution", op="aten.convolution.default", module=None)
    assert rewrite_expecting_skip(gm, (x,)) == {**expected, **where}


def test_functional_conv_transpose_with_stride_not_kernel_is_skipped() -> None:
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 6, 2, 2, dtype=FP64))  # (C_in, C_out, k, k)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv_transpose2d(x, self.weight, stride=1)

    x = torch.randn(X2, dtype=FP64)
    gm = shape_propagated(torch.fx.symbolic_trace(Up()), x)
    row = rewrite_expecting_skip(gm, (x,))
    assert row == _row(
        "torch.conv_transpose2d",
        2,
        X2,
        (2, 2),
        (1, 1),
        (0, 0),
        (1, 1),
        1,
        True,
        "stride (1, 1) != kernel (2, 2)",
        node="conv_transpose2d",
        module=None,
    )


def test_policy_never_reports_what_it_would_rewrite_and_rewrites_nothing() -> None:
    model = Wrap(nn.Conv2d(4, 4, 2, stride=2).double())
    x = torch.randn(X2, dtype=FP64)
    gm = shape_propagated(trace_leaf(model), x)
    row = rewrite_expecting_skip(gm, (x,), policy="never")
    assert row == _row(
        "nn.Conv2d", 2, X2, (2, 2), (2, 2), (0, 0), (1, 1), 1, False, "policy 'never' (stride == kernel (2, 2))"
    )


def _conv_of_inputs(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, stride=2)


def test_placeholder_weight_without_meta_gives_kernel_unknown() -> None:
    x, w = torch.randn(X2, dtype=FP64), torch.randn(5, 4, 2, 2, dtype=FP64)
    row = rewrite_expecting_skip(torch.fx.symbolic_trace(_conv_of_inputs), (x, w))
    assert row["reason"] == "kernel unknown: the graph records no static shape for the weight"
    assert (row["op"], row["kernel"], row["dims"], row["input_shape"]) == ("torch.conv2d", None, 2, None)


def test_symbolic_weight_gives_kernel_unknown() -> None:
    """make_fx(tracing_mode='symbolic') with the weight as an input: the kernel is symbolic, so is stride == kernel."""
    x, w = torch.randn(X2, dtype=FP64), torch.randn(5, 4, 2, 2, dtype=FP64)
    gm = make_fx(_conv_of_inputs, tracing_mode="symbolic")(x, w)
    row = rewrite_expecting_skip(gm, (x, w))
    assert row["reason"] == "kernel unknown: the graph records no static shape for the weight"
    assert row["kernel"] is None and row["op"] == "aten.convolution.default"
    assert all(isinstance(s, str) for s in row["input_shape"])


def test_aten_conv_with_only_shape_prop_meta_cannot_be_traced() -> None:
    """An ATen replacement is traced on meta['val']; ShapeProp's tensor_meta is not enough."""

    class AtenCall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 4, 2, 2, dtype=FP64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return aten.conv2d.default(x, self.weight, None, [2, 2])

    x = torch.randn(X2, dtype=FP64)
    for gm in (torch.fx.symbolic_trace(AtenCall()), shape_propagated(torch.fx.symbolic_trace(AtenCall()), x)):
        row = rewrite_expecting_skip(gm, (x,))
        assert row["reason"] == "no meta['val'] on the ATen node or its operands: the replacement cannot be traced"
        assert row["op"] == "aten.conv2d.default" and row["kernel"] == (2, 2)


def test_observed_output_strides_that_no_replacement_produces_are_not_rewritten() -> None:
    """A backend recording the conv output in a layout that is neither contiguous nor channels-last, returned from
    the graph: no replacement reproduces it, so the conv stays."""
    x, w = torch.randn(X2, dtype=FP64), torch.randn(5, 4, 2, 2, dtype=FP64)
    gm = make_fx(_conv_of_inputs)(x, w)
    (node,) = conv_nodes(gm)
    val = node.meta["val"]
    b, o, h, wd = val.shape
    with val.fake_mode:
        node.meta["val"] = torch.empty_strided(val.shape, (o * h * wd, h * wd, 1, h), dtype=val.dtype)
    row = rewrite_expecting_skip(gm, (x, w))
    assert row["reason"] == (
        f"the conv's output strides {(o * h * wd, h * wd, 1, h)} are observed (output: returned from the graph) and "
        "are neither contiguous nor channels-last"
    )


def test_skipped_conv_stays_while_its_neighbour_is_rewritten() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(4, 6, 2, stride=2).double()
            self.smooth = nn.Conv2d(6, 6, 3, padding=1).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.smooth(self.patch(x))

    model = Two()
    x = torch.randn(X2, dtype=FP64)
    gm = shape_propagated(torch.fx.symbolic_trace(model), x)
    report = conv_rewrite.rewrite(gm)
    assert [(r.module, r.decision, r.reason) for r in report] == [
        ("patch", "rewritten", "stride == kernel (2, 2)"),
        ("smooth", "skipped", "stride (1, 1) != kernel (3, 3)"),
    ]
    assert [n.target for n in conv_nodes(gm)] == ["smooth"]
    with torch.no_grad():
        assert (gm(x) - model(x)).abs().max().item() <= 1e-10


def _hooked(kind: str) -> nn.Module:
    conv = nn.Conv2d(4, 4, 2, stride=2).double()
    if kind == "forward":
        conv.register_forward_hook(lambda module, args, out: out * 2)
    elif kind == "forward_pre":
        conv.register_forward_pre_hook(lambda module, args: (args[0] * 3,))
    elif kind == "backward":
        conv.register_full_backward_hook(lambda module, grad_in, grad_out: None)
    elif kind == "weight_norm":  # the legacy weight_norm recomputes the weight in a forward-pre hook
        torch.nn.utils.weight_norm(conv)
    return conv


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.* is deprecated:FutureWarning")
@pytest.mark.parametrize(
    "kind, reason",
    [
        ("forward", "nn.Conv2d has forward hooks"),
        ("forward_pre", "nn.Conv2d has forward_pre hooks"),
        ("backward", "nn.Conv2d has backward hooks"),
        ("weight_norm", "nn.Conv2d has forward_pre hooks"),
    ],
)
def test_conv_module_with_hooks_is_skipped_because_the_function_would_bypass_them(kind: str, reason: str) -> None:
    model = Wrap(_hooked(kind))
    x = torch.randn(X2, dtype=FP64)
    gm = shape_propagated(trace_leaf(model), x)
    expected = _row("nn.Conv2d", 2, X2, (2, 2), (2, 2), (0, 0), (1, 1), 1, False, reason)
    assert rewrite_expecting_skip(gm, (x,)) == expected


def test_forward_replaced_on_the_instance_is_an_override() -> None:
    """accelerate's add_hook_to_module replaces module.forward on the instance, not on the class."""
    conv = nn.Conv2d(4, 4, 2, stride=2).double()
    conv_forward = conv.forward
    conv.forward = lambda x: conv_forward(x) + 1
    x = torch.randn(X2, dtype=FP64)
    gm = shape_propagated(trace_leaf(Wrap(conv)), x)
    assert rewrite_expecting_skip(gm, (x,))["reason"] == "Conv2d overrides forward"
