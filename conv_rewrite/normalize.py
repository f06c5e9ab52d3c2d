"""Normalize: read any FX node that computes a convolution into one immutable ``ConvCall``.

Graphs hold a conv as an nn.ConvNd ``call_module``, a torch/F.convNd call, or an ATen overload
(DESIGN.md section 2); everything downstream sees only the normalized form.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from ._torch_private import is_conv_module, module_hooks, module_id_of_stack_key, unwrap_module

aten = torch.ops.aten

Shape = tuple[Any, ...]


def _conv_signature(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # noqa: A002
    """torch.convNd / F.convNd / aten.convNd.default."""


def _conv_padding_signature(input, weight, bias=None, stride=1, padding="valid", dilation=1, groups=1):  # noqa: A002
    """aten.convNd.padding: the string-padding overload, whose omitted padding is "valid"."""


def _conv_transpose_signature(
    input,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,  # noqa: A002
):
    """torch.conv_transposeNd / aten.conv_transposeNd."""


def _convolution_signature(
    input,
    weight,
    bias,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    *backend_flags,  # noqa: A002
):
    """torch.convolution / aten.convolution / aten._convolution."""


_SIGNATURES = {
    "conv": inspect.signature(_conv_signature),
    "conv_padding": inspect.signature(_conv_padding_signature),
    "conv_transpose": inspect.signature(_conv_transpose_signature),
    "convolution": inspect.signature(_convolution_signature),
}

# target -> (signature, spatial dims; None where only the weight's rank tells)
_TORCH_TARGETS: dict[Callable[..., Any], tuple[str, int | None]] = {
    torch.conv1d: ("conv", 1),
    torch.conv2d: ("conv", 2),
    torch.conv3d: ("conv", 3),
    torch.conv_transpose1d: ("conv_transpose", 1),
    torch.conv_transpose2d: ("conv_transpose", 2),
    torch.conv_transpose3d: ("conv_transpose", 3),
    torch.convolution: ("convolution", None),
}
# Every ATen conv overload a graph can hold (Dynamo/AOT graphs: convolution; export and make_fx: the others).
ATEN_TARGETS: dict[Any, tuple[str, int | None]] = {
    aten.convolution.default: ("convolution", None),
    aten._convolution.default: ("convolution", None),
    aten.conv1d.default: ("conv", 1),
    aten.conv2d.default: ("conv", 2),
    aten.conv3d.default: ("conv", 3),
    aten.conv1d.padding: ("conv_padding", 1),
    aten.conv2d.padding: ("conv_padding", 2),
    aten.conv3d.padding: ("conv_padding", 3),
    aten.conv_transpose1d.default: ("conv_transpose", 1),
    aten.conv_transpose2d.input: ("conv_transpose", 2),
    aten.conv_transpose3d.input: ("conv_transpose", 3),
}
_MODULE_BASES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class ConvOperands:
    """The graph values a replacement reads: input, weight and bias as FX nodes (or None for no bias).

    For an nn.ConvNd ``call_module`` the weight and bias are the module's attributes, named by ``module_target``.
    """

    x: Any
    weight: Any = None
    bias: Any = None
    module_target: str | None = None
    has_bias: bool = False


@dataclass(frozen=True)
class ConvCall:
    """One convolution as the decision sees it. Shapes hold ints, or strings for symbolic sizes."""

    node: str
    module: str | None
    op: str
    dims: int | None
    input_shape: Shape | None
    dtype: str | None
    kernel: tuple[int, ...] | None
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    transposed: bool
    output_padding: tuple[int, ...] = ()
    padding_mode: str = "zeros"
    out_channels: int | None = None
    in_channels: int | str | None = None
    level: str = "torch"
    overridden_forward: str | None = None
    output_size_given: bool = False
    device: str | None = None
    hooks: tuple[str, ...] = ()
    operands: ConvOperands = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    @property
    def known_kernel(self) -> tuple[int, ...]:
        """The kernel of a conv ``decide.qualifies`` accepted (it rejects one whose kernel is unknown)."""
        if self.kernel is None:
            raise ValueError(f"conv {self.node} ({self.op}): kernel unknown, so it cannot be rewritten")
        return self.kernel

    @property
    def known_dims(self) -> int:
        """The spatial dims of a conv whose kernel is known (the weight's rank gives both)."""
        if self.dims is None:
            raise ValueError(f"conv {self.node} ({self.op}): spatial dims unknown, so it cannot be rewritten")
        return self.dims


RECORDED_KEYS = ("val", "example_value")  # make_fx/export/AOT, Dynamo


def recorded_value(node: Any) -> Any:
    """The (fake) value a tracer recorded on ``node``: ``meta['val']`` or Dynamo's ``meta['example_value']``."""
    if isinstance(node, torch.fx.Node):
        for key in RECORDED_KEYS:
            if key in node.meta:
                return node.meta[key]
    return None


def tensor_info(node: Any) -> tuple[Shape, Shape, torch.dtype] | None:
    """(shape, stride, dtype) recorded on a node by Dynamo, make_fx/export or ShapeProp; None when unknown."""
    if not isinstance(node, torch.fx.Node):
        return None
    value = recorded_value(node)
    if isinstance(value, torch.Tensor):
        return tuple(value.shape), tuple(value.stride()), value.dtype
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return tuple(tm.shape), tuple(tm.stride), tm.dtype
    return None


def _device(node: Any) -> str | None:
    """The device of the value recorded on ``node`` ("cpu", "cuda:0"...); None when nothing is recorded."""
    if not isinstance(node, torch.fx.Node):
        return None
    for key in ("val", "example_value"):
        value = node.meta.get(key)
        if isinstance(value, torch.Tensor):
            return str(value.device)
    return None


def _static(size: Any) -> Any:
    """An int for a concrete size, the symbol's text for a symbolic one (a graph node computing it included)."""
    if isinstance(size, torch.fx.Node):
        value = recorded_value(size)
        return _static(value) if isinstance(value, (int, torch.SymInt)) else size.name
    if isinstance(size, torch.SymInt):
        return int(size) if is_concrete_int(size) else str(size)
    return int(size)


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    """Broadcast an int or a 1-element list to ``dims`` entries, as ATen does."""
    if isinstance(value, (list, tuple)):
        values = tuple(_static(v) for v in value)
        return values * dims if len(values) == 1 and dims > 1 else values
    return (_static(value),) * dims


class ModuleNames:
    """The full path of every module under some root modules, the outermost first, built on first use.

    A module reachable from several roots is named from the outermost one, a module shared within a root by its first
    path (``named_modules`` order); torch.compile's, DataParallel's, DDP's and FSDP's wrappers add nothing to it.
    """

    def __init__(self, roots: Sequence[nn.Module]):
        self.roots = tuple(roots)
        self._names: dict[int, tuple[str, type]] | None = None

    def _built(self) -> dict[int, tuple[str, type]]:
        if self._names is None:
            names: dict[int, tuple[str, type]] = {}
            for root in reversed(self.roots):  # outer roots last: their names win
                found: dict[int, tuple[str, type]] = {}
                todo = [("", root)]
                while todo:
                    path, module = todo.pop()
                    module = unwrap_module(module)
                    if id(module) in found:
                        continue
                    found[id(module)] = (path, type(module))
                    children = [(f"{path}.{name}" if path else name, child) for name, child in module.named_children()]
                    todo.extend(reversed(children))
                names.update(found)
            self._names = names
        return self._names

    def of(self, module_id: int | None, cls: Any = None) -> str | None:
        """The path of the module with this id (and class, when given); None when no root holds it."""
        entry = self._built().get(module_id) if module_id is not None else None
        if entry is None or (cls is not None and entry[1] is not cls):
            return None
        return entry[0] or None


_module_names: contextvars.ContextVar[ModuleNames | None] = contextvars.ContextVar(
    "conv_rewrite_module_names", default=None
)


@contextlib.contextmanager
def module_names(roots: Sequence[nn.Module]) -> Iterator[None]:
    """Within the block, rows name modules by their path under ``roots`` (the user's model), where they are there.

    A graph that Dynamo compiled after a graph break inside a submodule records module paths relative to that
    submodule; the full path comes from the module itself, found under the model being called.
    """
    token = _module_names.set(ModuleNames(roots) if roots else None)
    try:
        yield
    finally:
        _module_names.reset(token)


def _full_name(module: nn.Module) -> str | None:
    names = _module_names.get()
    return names.of(id(module), type(module)) if names is not None else None


def _module_path(node: torch.fx.Node) -> str | None:
    """The fqn of the nn.Module a node came from: Dynamo and export record it in ``nn_module_stack``.

    Within ``module_names`` the module is looked up by identity under the model being called (a full path even in a
    graph compiled after a graph break); otherwise the recorded path is used, relative to the traced frame.
    """
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    key, (path, *rest) = list(stack.items())[-1]
    names = _module_names.get()
    if names is not None:
        full = names.of(module_id_of_stack_key(key), rest[0] if rest and isinstance(rest[0], type) else None)
        if full is not None:
            return full
    path = re.sub(r"^L\['[^']*'\]\.?", "", str(path))
    path = re.sub(r"(?:^|\.)(?:__dict__\['_modules'\]|_modules)\['([^']*)'\]", r".\1", path)
    return re.sub(r"\[['\"]?([^\]'\"]*)['\"]?\]", r".\1", path).lstrip(".") or None


def _overridden_forward(module: nn.Module) -> str | None:
    """The class name when an nn.ConvNd subclass replaces the forward (its forward may do more than the conv)."""
    cls = type(module)
    for base in _MODULE_BASES:
        if isinstance(module, base):
            same = all(getattr(cls, name, None) is getattr(base, name, None) for name in ("forward", "_conv_forward"))
            return None if same else cls.__name__
    return None


def module_conv_call(module: nn.Module, fqn: str) -> ConvCall | None:
    """The ConvCall for an nn.ConvNd module at ``fqn``, None for any other module; its input is not known.

    What the module's call does around the conv (hooks, a forward replaced on the instance) is not recorded here:
    ``convert_`` keeps the call, only a graph's replacement bypasses it (see ``_from_module``).
    """
    if not is_conv_module(module):
        return None
    dims = len(module.kernel_size)
    padding = module.padding if isinstance(module.padding, str) else _tuple(module.padding, dims)
    return ConvCall(
        node=fqn,
        module=fqn,
        op=f"nn.{type(module).__name__}",
        dims=dims,
        input_shape=None,
        dtype=str(module.weight.dtype).replace("torch.", ""),
        kernel=tuple(module.kernel_size),
        stride=_tuple(module.stride, dims),
        padding="valid" if padding == "valid" else padding,
        dilation=_tuple(module.dilation, dims),
        groups=module.groups,
        transposed=module.transposed,
        output_padding=_tuple(module.output_padding, dims),
        padding_mode=module.padding_mode,
        out_channels=module.out_channels,
        in_channels=module.in_channels,
        level="module",
        overridden_forward=_overridden_forward(module),
        device=str(module.weight.device),
        operands=ConvOperands(x=None, module_target=fqn, has_bias=module.bias is not None),
    )


def _from_module(node: torch.fx.Node, gm: torch.fx.GraphModule) -> ConvCall | None:
    try:
        module = gm.get_submodule(str(node.target))
    except AttributeError:
        return None
    call = module_conv_call(module, str(node.target))
    if call is None:
        return None
    info = tensor_info(node.args[0]) if node.args else None
    # The replacement bypasses the module's call: its hooks and a forward replaced on the instance (as accelerate's
    # hooks do) would not run.
    instance_forward = type(module).__name__ if "forward" in vars(module) else None
    return replace(
        call,
        node=node.name,
        module=_full_name(module) or call.module,
        input_shape=tuple(_static(s) for s in info[0]) if info else None,
        dtype=str(info[2]).replace("torch.", "") if info else call.dtype,
        overridden_forward=instance_forward or call.overridden_forward,
        output_size_given=len(node.args) > 1 or bool(node.kwargs),
        device=_device(node.args[0] if node.args else None) or call.device,
        hooks=module_hooks(module),
        operands=replace(call.operands, x=node.args[0] if node.args else node.kwargs.get("input")),
    )


def _weight_shape(weight: Any, gm: torch.fx.GraphModule) -> Shape | None:
    if isinstance(weight, torch.fx.Node) and weight.op == "get_attr":
        try:
            return tuple(graph_attr(gm, str(weight.target)).shape)
        except AttributeError:
            return None
    info = tensor_info(weight)
    return info[0] if info else None


def _in_channels(weight_shape: Shape | None, transposed: bool, groups: Any) -> int | str | None:
    """The input's channel count as the weight gives it: (O, C/groups, k..), or (C, O/groups, k..) transposed."""
    if weight_shape is None:
        return None
    return _static(weight_shape[0] if transposed else weight_shape[1] * groups)


def graph_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    """The attribute a ``get_attr`` node's dotted ``target`` names on ``gm``."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _from_function(node: torch.fx.Node, gm: torch.fx.GraphModule, level: str, kind: str, dims: int | None) -> ConvCall:
    binding = _SIGNATURES[kind].bind(*node.args, **node.kwargs)
    binding.apply_defaults()
    bound = binding.arguments
    weight = bound["weight"]
    weight_shape = _weight_shape(weight, gm)
    if dims is None:
        dims = len(weight_shape) - 2 if weight_shape is not None else None
    n = dims or 1
    kernel = tuple(_static(s) for s in weight_shape[2:]) if weight_shape is not None else None
    if kernel is not None and not all(isinstance(k, int) for k in kernel):
        kernel = None
    transposed = kind == "conv_transpose" or bool(bound.get("transposed", False))
    padding = bound.get("padding", 0)
    info = tensor_info(bound["input"])
    target = node.target
    assert not isinstance(target, str), "conv_call passes only call_function nodes of a known conv target"
    op = f"aten.{target.__name__}" if level == "aten" else f"torch.{target.__name__}"
    return ConvCall(
        node=node.name,
        module=_module_path(node),
        op=op,
        dims=dims,
        input_shape=tuple(_static(s) for s in info[0]) if info else None,
        dtype=str(info[2]).replace("torch.", "") if info else None,
        kernel=kernel,
        stride=_tuple(bound.get("stride", 1), n),
        padding=padding if isinstance(padding, str) else _tuple(padding, n),
        dilation=_tuple(bound.get("dilation", 1), n),
        groups=_static(bound.get("groups", 1)),
        transposed=transposed,
        output_padding=_tuple(bound.get("output_padding", 0), n),
        out_channels=_static(weight_shape[1 if transposed else 0]) if weight_shape is not None else None,
        in_channels=_in_channels(weight_shape, transposed, bound.get("groups", 1)),
        level=level,
        device=_device(bound["input"]),
        operands=ConvOperands(
            x=bound["input"], weight=weight, bias=bound.get("bias"), has_bias=bound.get("bias") is not None
        ),
    )


def conv_call(node: torch.fx.Node, gm: torch.fx.GraphModule) -> ConvCall | None:
    """The ConvCall for ``node``, or None when the node computes no convolution."""
    if node.op == "call_module":
        return _from_module(node, gm)
    if node.op != "call_function":
        return None
    if node.target in ATEN_TARGETS:
        return _from_function(node, gm, "aten", *ATEN_TARGETS[node.target])
    if node.target in _TORCH_TARGETS:
        return _from_function(node, gm, "torch", *_TORCH_TARGETS[node.target])
    return None
