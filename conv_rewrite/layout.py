"""Layout: which output strides a rewritten conv must hand out, decided from the graph alone.

The GEMM form is cheapest as the channels-last view of its (B, L, O) result (the "free" layout), but strides are
meaning (DESIGN.md section 10): they decide whether reshape/contiguous alias, what as_strided reads, and what leaves
the graph. A forward walk over the conv's users classifies each op by what PyTorch records about it (the view, mutable
and pointwise properties of its ATen schema) and a short list of ops whose result layout is fixed; it runs no user
code and no op, so it changes no state and adds no guard.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from ._torch_private import aten_op, fake_mode_of, module_hooks
from .normalize import ConvCall, recorded_value, tensor_info

# Ops whose result is a fresh tensor laid out the same whatever the strides of their inputs (checked in eager and on
# fake tensors, tests/test_layout.py): where every path from the conv ends in one, its strides cannot be observed.
FIXED_LAYOUT = frozenset(
    {"linear", "matmul", "mm", "bmm", "addmm", "baddbmm", "layer_norm", "native_layer_norm", "__matmul__"}
)
# Ops that read a tensor's strides or storage directly, or need a layout to succeed (view).
STRIDE_READERS = frozenset(
    {
        "as_strided",
        "as_strided_",
        "stride",
        "is_contiguous",
        "data_ptr",
        "storage_offset",
        "set_",
        "untyped_storage",
        "view",
        "_unsafe_view",
        "view_as",
        "numpy",
        "tolist",
        "__array__",
        "resize_",
        "resize_as_",
    }
)
# Pure ops whose result may alias the input or follows its layout: the walk continues through them.
FOLLOW_LAYOUT = frozenset(
    {
        "flatten",
        "unflatten",
        "reshape",
        "reshape_as",
        "transpose",
        "permute",
        "t",
        "unsqueeze",
        "squeeze",
        "narrow",
        "select",
        "slice",
        "expand",
        "expand_as",
        "movedim",
        "moveaxis",
        "swapaxes",
        "swapdims",
        "split",
        "chunk",
        "unbind",
        "tensor_split",
        "split_with_sizes",
        "contiguous",
        "detach",
        "alias",
        "to",
        "_to_copy",
        "type",
        "type_as",
        "float",
        "half",
        "bfloat16",
        "double",
        "clone",
        "getitem",
        "dropout",
        "softmax",
        "log_softmax",
        "_softmax",
        "_log_softmax",
        "cat",
        "stack",
        "where",
        "masked_fill",
        "mT",
        "real",
    }
)
_SHAPE_QUERIES = frozenset(
    {
        "size",
        "dim",
        "numel",
        "shape",
        "ndim",
        "dtype",
        "device",
        "is_floating_point",
        "sym_size",
        "sym_numel",
        "sym_stride",
        "requires_grad",
        "layout",
    }
)
_IN_PLACE_OPERATORS = {
    operator.setitem,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.imatmul,
    operator.ilshift,
    operator.irshift,
}
_OPERATOR_NAMES = {
    operator.add: "add",
    operator.sub: "sub",
    operator.mul: "mul",
    operator.truediv: "div",
    operator.floordiv: "floor_divide",
    operator.neg: "neg",
    operator.pow: "pow",
    operator.mod: "remainder",
    operator.matmul: "matmul",
    operator.getitem: "getitem",
    operator.abs: "abs",
}
# Leaf modules of a symbolic_trace graph, read as the function their forward calls (only these exact classes).
_MODULE_OPS = {
    nn.Linear: "linear",
    nn.LayerNorm: "layer_norm",
    nn.Flatten: "flatten",
    nn.Unflatten: "unflatten",
    nn.Identity: "alias",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Dropout: "dropout",
    nn.Softmax: "softmax",
}

SINK, FOLLOW, IGNORE = "sink", "follow", "ignore"
# The output layouts a replacement can be asked for.
FREE, CONTIGUOUS, CHANNELS_LAST, AS_CONV = "free view", "contiguous", "channels-last", "as conv at run time"


def _name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str | None:
    """The op a node runs, as the name of its ATen op family ("flatten", "add"...); None when unknown."""
    target = node.target
    if node.op == "call_method":
        return str(target)
    if node.op == "call_module":
        module = gm.get_submodule(str(target))
        if module_hooks(module) or "forward" in vars(module):
            return None
        if isinstance(module, (nn.ReLU, nn.Dropout)) and module.inplace:
            return None
        return _MODULE_OPS.get(type(module))
    if node.op != "call_function":
        return None
    if target in _OPERATOR_NAMES:
        return _OPERATOR_NAMES[target]
    op = aten_op(target)
    if op is not None:
        return op[0]
    return getattr(target, "__name__", None) if _is_torch_callable(target) or target is getattr else None


def _mutates(node: torch.fx.Node, name: str | None) -> bool:
    if node.target in _IN_PLACE_OPERATORS or "out" in node.kwargs or node.kwargs.get("inplace") is True:
        return True
    op = aten_op(node.target)
    if op is not None:
        return op[1]
    return name is not None and name.endswith("_") and not name.startswith("_")


def _is_pointwise(node: torch.fx.Node, name: str) -> bool:
    """Whether ATen tags the op as pointwise (its result follows its inputs' layout): the overload an ATen graph
    calls, or for a torch-level call any overload of the ATen op of that name."""
    op = aten_op(node.target)
    if op is not None and op[2]:
        return True
    packet = getattr(torch.ops.aten, name, None)
    overloads = packet.overloads() if op is None and packet is not None and hasattr(packet, "overloads") else []
    return any(torch.Tag.pointwise in getattr(packet, o).tags for o in overloads)


def effect(node: torch.fx.Node, gm: torch.fx.GraphModule) -> tuple[str, str]:
    """What ``node`` does with a value whose strides the rewrite may change: (SINK | FOLLOW | IGNORE, "") when it
    cannot observe them, ("observe", why) when it can."""
    if node.op == "output":
        return "observe", "returned from the graph"
    name = _name(node, gm)
    if name in _SHAPE_QUERIES or (node.target is getattr and len(node.args) > 1 and node.args[1] in _SHAPE_QUERIES):
        return IGNORE, ""
    if _mutates(node, name):
        return "observe", f"{name or node.target} writes in place"
    if name is None:
        return "observe", f"{node.op} {node.target} is not known to ignore strides"
    if name in STRIDE_READERS:
        return "observe", f"{name} depends on strides"
    if name in FIXED_LAYOUT:
        return SINK, ""
    if name in FOLLOW_LAYOUT or _is_pointwise(node, name):
        return FOLLOW, ""
    return "observe", f"{name} is not known to ignore strides"


def observer(gm: torch.fx.GraphModule, node: torch.fx.Node, free_value: torch.Tensor | None) -> str | None:
    """Why code after ``node`` could tell its strides (or whether views of it alias) from another layout's, as
    "<user>: <reason>"; None when nothing can.

    Every value derived from ``node`` through views or layout-following ops is watched until it reaches an op whose
    result layout is fixed. A ``view`` of a watched value is fine where it also succeeds on the free layout: the ops
    from ``node`` to it are replayed on ``free_value`` (a fake tensor of static shape; None where sizes are symbolic)
    in a fake mode of the walk's own, so no user code runs and no guard is added.
    """
    free = {node: free_value}
    mode = fake_mode_of(free_value) if free_value is not None else None
    for user in _nodes_after(node):
        watched_inputs = [a for a in user.all_input_nodes if a in free]
        if not watched_inputs:
            continue
        kind, why = effect(user, gm)
        if kind == "observe" and _name(user, gm) in _VIEWS:
            result = _replay(user, free, mode)
            if result is None:
                return f"{user.name}: {why} and may fail on the free layout"
            kind = FOLLOW
            free[user] = result
        elif kind == "observe":
            return f"{user.name}: {why}"
        elif kind == FOLLOW:
            free[user] = _replay(user, free, mode)
    return None


_VIEWS = frozenset({"view", "_unsafe_view", "view_as"})


def _nodes_after(node: torch.fx.Node) -> Any:
    current = node.next
    while current.op != "root":
        yield current
        current = current.next


def _replay(node: torch.fx.Node, free: dict[torch.fx.Node, Any], mode: Any) -> Any:
    """``node``'s value on the free layout, on fake tensors of static shape; None when it cannot be known."""
    if mode is None or node.op not in ("call_function", "call_method"):
        return None
    if any(free.get(a, 0) is None for a in node.all_input_nodes):
        return None
    if node.op == "call_function" and not _is_torch_callable(node.target):
        return None

    def value(arg: torch.fx.Node) -> Any:
        if arg in free:
            return free[arg]
        recorded = recorded_value(arg)
        if isinstance(recorded, torch.Tensor):
            if not all(isinstance(s, int) for s in (*recorded.shape, *recorded.stride())):
                raise LookupError(arg.name)
            with mode:
                return torch.empty_strided(
                    recorded.shape, recorded.stride(), dtype=recorded.dtype, device=recorded.device
                )
        if isinstance(recorded, (int, float, bool)):
            return recorded
        raise LookupError(arg.name)

    try:
        args = torch.fx.node.map_arg(node.args, value)
        kwargs = torch.fx.node.map_arg(node.kwargs, value)
        with mode:
            if node.op == "call_method":
                return getattr(args[0], str(node.target))(*args[1:], **kwargs)
            target = node.target
            assert callable(target), "a call_function node's target is the function it calls"
            return target(*args, **kwargs)
    except Exception:
        return None


def _is_torch_callable(target: Any) -> bool:
    """ATen ops, torch functions and operator.* (never a user function, which symbolic_trace may record)."""
    if aten_op(target) is not None or target in _OPERATOR_NAMES:
        return True
    return str(getattr(target, "__module__", "") or "").startswith("torch")


def free_strides(shape: tuple[Any, ...], dims: int) -> tuple[Any, ...]:
    """Strides of ``patchify_conv``'s free view for an output of ``shape``: (B, O, o1..oN), or (O, o1..oN).

    For 4-d and 5-d outputs these are exactly the channels-last strides ATen gives, size-1 dims included.
    """
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


def contiguous_strides(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    strides: list[Any] = []
    step: Any = 1
    for n in reversed(shape):
        strides.append(step)
        step = step * n
    return tuple(reversed(strides))


def _fake(shape: tuple[Any, ...], strides: tuple[Any, ...], node: torch.fx.Node) -> torch.Tensor | None:
    """A fake tensor like ``node``'s value with ``strides``, in a fake mode of its own; None for symbolic sizes."""
    if not all(isinstance(s, int) for s in (*shape, *strides)):
        return None
    recorded = recorded_value(node)
    info = tensor_info(node)
    device = recorded.device if isinstance(recorded, torch.Tensor) else "cpu"
    with fake_mode_of(None):
        return torch.empty_strided(shape, strides, dtype=info[2] if info else torch.float32, device=device)


def _is_one(size: Any) -> bool:
    return isinstance(size, int) and size == 1


def same_strides(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Whether two stride tuples are provably equal in every dim (size-1 dims too: ``.stride()`` shows them)."""
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b))


def plan_layout(gm: torch.fx.GraphModule, node: torch.fx.Node, call: ConvCall) -> tuple[str | None, str]:
    """The output layout the replacement must produce, or (None, reason) when none reproduces the conv's.

    The conv's strides are the ones its tracer recorded (the conv's own meta function, or ShapeProp's real run);
    where nothing is recorded the replacement asks ATen at run time, as the conv does.
    """
    if call.level == "aten":
        ops = call.operands
        traced_on = [node, ops.x, ops.weight] + ([ops.bias] if ops.has_bias else [])
        if not all(isinstance(recorded_value(n), torch.Tensor) for n in traced_on):
            return None, "no meta['val'] on the ATen node or its operands: the replacement cannot be traced"
    info = tensor_info(node)
    if info is None:
        return AS_CONV, ""
    shape, stride, _ = info
    contiguous = contiguous_strides(shape)
    if call.transposed:
        if same_strides(stride, contiguous):
            return CONTIGUOUS, ""
        seen_by = observer(gm, node, _fake(shape, contiguous, node))
        if seen_by is None:
            return CONTIGUOUS, ""
        return None, f"the conv's output strides {tuple(stride)} are observed ({seen_by}) and are not contiguous"
    seen_by = observer(gm, node, _fake(shape, free_strides(shape, call.known_dims), node))
    if seen_by is None:
        return FREE, ""
    if same_strides(stride, free_strides(shape, call.known_dims)):
        # The free view is exact, but it views the GEMM's buffer: where it is seen, a copy of its own hands out the
        # strides where AOTAutograd would restride size-1 dims or Inductor pad the GEMM's rows.
        unsafe = any(_is_one(s) for s in shape) or not (isinstance(shape[1], int) and shape[1] % 8 == 0)
        return (CHANNELS_LAST if unsafe else FREE), ""
    if same_strides(stride, contiguous):
        return CONTIGUOUS, ""
    return None, (
        f"the conv's output strides {tuple(stride)} are observed ({seen_by}) and are neither contiguous nor "
        "channels-last"
    )
