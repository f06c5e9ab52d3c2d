"""Replace: swap one conv node for the patchify GEMM, at the level the graph is written in.

Torch-level graphs (symbolic_trace, Dynamo) get one call of the pure function; ATen-level graphs (make_fx,
torch.export, AOT/post-grad) get the ATen ops that function traces to, each with a valid ``meta['val']``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx
from torch.fx.experimental.proxy_tensor import make_fx

from ._torch_private import fake_mode_of, python_dispatcher, same_fake_mode
from .layout import AS_CONV, CHANNELS_LAST, CONTIGUOUS, FREE, free_strides
from .normalize import RECORDED_KEYS, ConvCall, recorded_value
from .patchify import (
    patchify_conv,
    patchify_conv_channels_last,
    patchify_conv_like_conv,
    unpatchify_conv_transpose,
    unpatchify_conv_transpose_like_conv,
)

_KEPT_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node", "seq_nr")
_FOR_INDUCTOR: contextvars.ContextVar[bool] = contextvars.ContextVar("conv_rewrite_for_inductor", default=False)


@contextlib.contextmanager
def for_inductor(inductor: bool = True) -> Iterator[None]:
    """Within the block, replacements are built for a graph that Inductor compiles (when ``inductor``): where the
    fastest exact form cannot be known from the sizes, Inductor measures it (``patchify_conv(autotune=True)``)."""
    token = _FOR_INDUCTOR.set(inductor)
    try:
        yield
    finally:
        _FOR_INDUCTOR.reset(token)


def replacement(call: ConvCall, layout: str) -> Any:
    """The pure function (operands x, weight[, bias]) that computes ``call`` with the given output ``layout``.

    Inside ``for_inductor``, where the fastest exact contiguous form is unknown from the sizes, the choice is left to
    Inductor's autotuning (``patchify_conv(autotune=True)``).
    """
    padding = (0,) * len(call.known_kernel) if isinstance(call.padding, str) else call.padding
    if call.transposed:
        transpose_fn = unpatchify_conv_transpose_like_conv if layout == AS_CONV else unpatchify_conv_transpose
        return functools.partial(transpose_fn, padding=padding, output_padding=call.output_padding)
    padded = any(padding) or call.padding_mode != "zeros"
    kwargs: dict[str, Any] = {"padding": padding, "padding_mode": call.padding_mode} if padded else {}
    if _FOR_INDUCTOR.get() and layout in (AS_CONV, CONTIGUOUS):
        kwargs["autotune"] = True  # the layouts that may be contiguous
    if layout in (AS_CONV, CHANNELS_LAST):
        fn = patchify_conv_like_conv if layout == AS_CONV else patchify_conv_channels_last
        return functools.partial(fn, **kwargs)
    return functools.partial(patchify_conv, contiguous_output=layout == CONTIGUOUS, **kwargs)


def _operand_nodes(gm: torch.fx.GraphModule, call: ConvCall) -> list[Any]:
    ops = call.operands
    if call.level != "module":
        return [ops.x, ops.weight] + ([ops.bias] if ops.has_bias else [])
    weight = gm.graph.get_attr(f"{ops.module_target}.weight")
    bias = gm.graph.get_attr(f"{ops.module_target}.bias") if ops.has_bias else None
    return [ops.x, weight] + ([bias] if bias is not None else [])


def replace_conv(gm: torch.fx.GraphModule, node: torch.fx.Node, call: ConvCall, layout: str) -> torch.fx.Node:
    """Replace ``node`` by the patchify GEMM with the given output ``layout``; returns the node producing it."""
    fn = replacement(call, layout)
    with gm.graph.inserting_before(node):
        operands = _operand_nodes(gm, call)
        if call.level == "aten":
            new = _insert_aten(gm, node, fn, operands)
        else:
            partial = isinstance(fn, functools.partial)
            new = gm.graph.call_function(fn.func if partial else fn, tuple(operands), fn.keywords if partial else {})
            key = next((k for k in RECORDED_KEYS if k in node.meta), None)
            if key is not None:
                new.meta[key] = _fake_run(fn, operands)
    for name in _KEPT_META:
        if name in node.meta and name not in new.meta:
            new.meta[name] = node.meta[name]
    if "tensor_meta" in node.meta and "tensor_meta" not in new.meta:
        new.meta["tensor_meta"] = _tensor_meta(node.meta["tensor_meta"], layout, call.known_dims)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def _fake_values(operands: list[Any]) -> list[Any]:
    """The operands' recorded values as fake tensors of one mode (make_fx records each in a mode of its own)."""
    values = [recorded_value(n) for n in operands]
    if any(not isinstance(v, torch.Tensor) for v in values):
        raise LookupError("an operand has no recorded value")
    return same_fake_mode(values)


def _fake_run(fn: Any, operands: list[Any]) -> Any:
    """The replacement's output as a fake value, for the meta of a torch-level node; None when unknown."""
    try:
        values = _fake_values(operands)
    except LookupError:
        return None
    with fake_mode_of(values[0]), python_dispatcher():
        return fn(*values)


def _insert_aten(gm: torch.fx.GraphModule, node: torch.fx.Node, fn: Any, operands: list[Any]) -> torch.fx.Node:
    """Trace ``fn`` to ATen on the operands' fake values and copy its nodes in before ``node``.

    Traced without grad: an ATen graph is differentiated, if at all, through its own ops (autograd over a make_fx or
    export graph), so the replacement's plain ops, not the forward of its autograd.Function, are what it must hold.
    """
    values = _fake_values(operands)
    with fake_mode_of(values[0]), python_dispatcher(), torch.no_grad():
        traced = make_fx(fn, tracing_mode="real")(*values)
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    new = gm.graph.graph_copy(traced.graph, dict(zip(placeholders, operands)))
    assert isinstance(new, torch.fx.Node), "the traced replacement returns one tensor"
    return new


def _tensor_meta(conv_meta: Any, layout: str, dims: int) -> Any:
    """ShapeProp's TensorMetadata of the conv, restrided for the replacement: later convs read their input's shape
    from it."""
    if layout != FREE:  # the conv's own strides
        return conv_meta
    return conv_meta._replace(stride=free_strides(tuple(conv_meta.shape), dims), memory_format=None)
