"""Output layout: whether any code in the graph can observe the strides of a rewritten conv's output.

``patchify_conv`` is cheapest when it hands out the GEMM's channels-last view, but the conv returns its own strides
(DESIGN.md section 1). We re-run the conv's users on fake tensors with the free layout: where every path ends in
an op whose result is laid out as before (linear, a norm, ``contiguous``...), nobody can tell; where a path reaches
the graph output, a ``view`` that no longer fits, or a stride query, the conv's own layout is needed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.fx.node import map_arg

from ._torch_private import fake_mode_of
from .conv_call import graph_attr, recorded_value, tensor_info

_SHAPE_QUERIES = {"size", "dim", "numel", "shape", "ndim", "dtype", "device", "is_floating_point"}


def free_strides(shape: tuple[Any, ...], dims: int) -> tuple[Any, ...]:
    """Strides of ``patchify_conv``'s free view for an output of ``shape``: (B, O, o1..oN), or (O, o1..oN)."""
    channels_dim = len(shape) - dims - 1
    strides: list[Any] = [0] * len(shape)
    step = shape[channels_dim]
    for d in range(len(shape) - 1, channels_dim, -1):
        strides[d] = step
        step = step * shape[d]
    strides[channels_dim] = 1
    if channels_dim:
        strides[0] = step
    return tuple(strides)


def same_layout(shape: tuple[Any, ...], a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two stride tuples address ``shape`` identically (dims of size 1 never matter)."""
    return all(statically_known_true(n <= 1) or statically_known_true(x == y) for n, x, y in zip(shape, a, b))


def contiguous_strides(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    strides: list[Any] = []
    step: Any = 1
    for n in reversed(shape):
        strides.append(step)
        step = step * n
    return tuple(reversed(strides))


def _same_value_layout(new: Any, old: Any) -> bool:
    if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor):
        return tuple(new.shape) == tuple(old.shape) and same_layout(tuple(new.shape), new.stride(), old.stride())
    if isinstance(new, (tuple, list)) and isinstance(old, (tuple, list)) and len(new) == len(old):
        return all(_same_value_layout(a, b) for a, b in zip(new, old))
    if isinstance(new, torch.Tensor) or isinstance(old, torch.Tensor):
        return False
    try:
        return bool(statically_known_true(new == old)) if isinstance(new, torch.SymInt) else new == old
    except Exception:
        return False


def _is_shape_query(node: torch.fx.Node) -> bool:
    """``t.size()``-like calls, and ``t.shape``-like attribute reads (``getattr(t, "shape")`` in symbolic_trace)."""
    if node.op == "call_method":
        return node.target in _SHAPE_QUERIES
    is_getattr = node.op == "call_function" and node.target is getattr and len(node.args) >= 2
    return is_getattr and node.args[1] in _SHAPE_QUERIES


class _Replay:
    """Re-runs single nodes on fake tensors, substituting new values for some nodes."""

    def __init__(self, gm: torch.fx.GraphModule, fake_mode: Any):
        self.gm = gm
        self.fake_mode = fake_mode

    def value(self, arg: Any, env: dict[torch.fx.Node, Any]) -> Any:
        if arg in env:
            return env[arg]
        recorded = recorded_value(arg)
        if recorded is not None:
            return recorded
        info = tensor_info(arg)
        if info is not None:
            shape, stride, dtype = info
            with self.fake_mode:
                return torch.empty_strided(shape, stride, dtype=dtype)
        if arg.op == "get_attr":
            attr = graph_attr(self.gm, str(arg.target))
            return self.fake_mode.from_tensor(attr) if isinstance(attr, torch.Tensor) else attr
        raise LookupError(f"no value recorded for {arg.name}")

    def run(self, node: torch.fx.Node, env: dict[torch.fx.Node, Any]) -> Any:
        args = map_arg(node.args, lambda a: self.value(a, env))
        kwargs = map_arg(node.kwargs, lambda a: self.value(a, env))
        with self.fake_mode:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            if node.op == "call_module":
                return self.gm.get_submodule(str(node.target))(*args, **kwargs)
        raise LookupError(f"cannot replay {node.op} {node.name}")


def layout_is_observed(gm: torch.fx.GraphModule, node: torch.fx.Node, free_value: torch.Tensor) -> bool:
    """Whether code after ``node`` could tell ``free_value``'s strides from the ones recorded on ``node``.

    Conservative: a user that cannot be replayed on fake tensors counts as observing.
    """
    recorded = recorded_value(node)
    fake_mode = fake_mode_of(recorded if isinstance(recorded, torch.Tensor) else None)
    replay = _Replay(gm, fake_mode)
    env: dict[torch.fx.Node, Any] = {node: free_value}
    pending = [node]
    while pending:
        current = pending.pop()
        for user in current.users:
            if user.op == "output":
                return True
            if _is_shape_query(user):
                continue
            try:
                new = replay.run(user, env)
            except Exception:
                return True
            old = recorded_value(user)
            if old is None and tensor_info(user) is not None:
                shape, stride, _ = tensor_info(user)
                if (
                    isinstance(new, torch.Tensor)
                    and tuple(new.shape) == shape
                    and same_layout(shape, new.stride(), stride)
                ):
                    continue
            elif old is not None and _same_value_layout(new, old):
                continue
            if not isinstance(new, (torch.Tensor, tuple, list)):
                return True
            if user not in env:
                env[user] = new
                pending.append(user)
    return False
