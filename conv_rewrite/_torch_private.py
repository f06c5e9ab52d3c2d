"""Every use of a private PyTorch API, in one place, with the versions it was checked on (2.11, 2.13).

Imports torch's private modules inside each function: importing this module loads no compiler.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
import sys
import types
from collections.abc import Iterator
from typing import Any, TypeGuard

import torch


def fake_mode_of(value: torch.Tensor | None) -> Any:
    """The FakeTensorMode a traced value belongs to, or a fresh one that accepts real tensors.

    ``FakeTensor.fake_mode`` and ``FakeTensorMode(allow_non_fake_inputs=...)``: torch._subclasses, stable 2.6-2.13.
    """
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    if isinstance(value, FakeTensor):
        return value.fake_mode
    return FakeTensorMode(allow_non_fake_inputs=True)


def same_fake_mode(values: list[torch.Tensor]) -> list[torch.Tensor]:
    """``values`` as fake tensors of the first one's mode: others are re-created there with their metadata."""
    from torch._subclasses.fake_tensor import FakeTensor

    mode = fake_mode_of(values[0])
    out: list[torch.Tensor] = []
    for v in values:
        if isinstance(v, FakeTensor) and v.fake_mode is mode:
            out.append(v)
        elif not isinstance(v, FakeTensor):
            out.append(mode.from_tensor(v))
        else:
            with mode:
                out.append(torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device=v.device))
    return out


def python_dispatcher() -> Any:
    """A context in which ATen ops run their Python meta kernels, which make_fx needs on symbolic sizes.

    ``torch._dispatch.python.enable_python_dispatcher``: stable 2.6-2.13; Inductor's pattern matcher traces its
    replacements under it too.
    """
    from torch._dispatch.python import enable_python_dispatcher

    return enable_python_dispatcher()


def module_hooks(module: torch.nn.Module) -> tuple[str, ...]:
    """The kinds of hooks registered on ``module`` that run when it is called (weight_norm and offloading use them).

    ``Module._forward_pre_hooks``, ``_forward_hooks``, ``_backward_pre_hooks``, ``_backward_hooks``: private
    attributes, stable 2.0-2.13.
    """
    kinds = {
        "forward_pre": module._forward_pre_hooks,
        "forward": module._forward_hooks,
        "backward_pre": module._backward_pre_hooks,
        "backward": module._backward_hooks,
    }
    return tuple(kind for kind, hooks in kinds.items() if hooks)


def conv_returns_channels_last(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool
) -> bool:
    """Whether a stride == kernel conv of ``x`` returns the channels-last layout (1-d: (B, O, L) with O innermost).

    ATen decides (``torch._C._select_conv_backend``, ``torch._C._conv_determine_backend_memory_format``: same
    signatures on 2.11 and 2.13; ATen runs a 1-d conv as a 2-d one), and is asked: on eager tensors, and on the fake
    tensors of make_fx, AOTAutograd and torch.export, as the conv's own fake kernel asks it (symbolic sizes too, with
    the guards the conv itself adds). While Dynamo traces (strict torch.export, a compiled caller of the patchify
    functions) it cannot see the tensors: on the CPU with static sizes ATen is asked at trace time on empty tensors of
    the same sizes, strides and dtype (marked ``torch.compiler.assume_constant_result``; guards on the input's strides
    keep it valid); elsewhere the rule of cuDNN and oneDNN holds: a channels-last input or weight gives channels-last.
    """
    if not torch.compiler.is_dynamo_compiling():
        return _ask_aten(x, weight, bias, transposed)
    if x.device.type == "cpu" and static_sizes([s for t in (x, weight) for s in (*t.shape, *t.stride())]):
        return _cpu_conv_layout_at_trace_time(
            tuple(x.shape), tuple(x.stride()), tuple(weight.shape), tuple(weight.stride()), x.dtype, transposed
        )
    dims = weight.dim() - 2
    fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
    weight_2d = weight.unsqueeze(2) if dims == 1 else weight
    inputs = (weight_2d,) if dims == 1 else (x, weight)
    return any(t.is_contiguous(memory_format=fmt) and not t.is_contiguous() for t in inputs)


def _ask_aten(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> bool:
    """ATen's choice for these tensors, outside any proxy tracing (``disable_proxy_modes_tracing``, same on 2.11 and
    2.13): the views made to ask it must not become nodes of a traced program."""
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    dims = weight.dim() - 2
    zeros = [0] * dims
    kernel = list(weight.shape[2:])
    untraced = disable_proxy_modes_tracing() if proxy_tracing() else contextlib.nullcontext()
    with untraced, _run_time_conv_backends():
        backend = torch._C._select_conv_backend(x, weight, bias, kernel, zeros, [1] * dims, transposed, zeros, 1)
        x_2d, weight_2d = x, weight
        if dims == 1:  # as ATen views a 1-d conv's contiguous input (a meta stand-in spares an eager copy)
            x_2d = x.unsqueeze(2) if x.is_contiguous() else torch.empty((*x.shape[:2], 1, x.shape[2]), device="meta")
            weight_2d = weight.unsqueeze(2)
        fmt = torch._C._conv_determine_backend_memory_format(x_2d, weight_2d, backend)
    return fmt in (torch.channels_last, torch.channels_last_3d)


@contextlib.contextmanager
def _run_time_conv_backends() -> Iterator[None]:
    """Under torch.export, the conv backends its program meets at run time: export traces with mkldnn, cuDNN and
    NNPACK turned off (``torch.export._trace._ignore_backend_decomps``, 2.11 and 2.13), where ATen would choose the
    slow paths' layouts. ``torch.backends.*.set_flags`` returns the flags it replaced (public, same on both)."""
    if not torch.compiler.is_exporting():
        yield
        return
    backends = (torch.backends.mkldnn, torch.backends.cudnn, torch.backends.nnpack)
    saved = [backend.set_flags(True) for backend in backends]
    try:
        yield
    finally:
        for backend, flags in zip(backends, saved):
            backend.set_flags(*flags)


def unsafe_view(t: torch.Tensor, shape: Any) -> torch.Tensor:
    """``t.view(shape)`` that autograd and AOTAutograd treat as a tensor of its own, not a view (what reshape and
    matmul return): ``aten._unsafe_view``, same on 2.11 and 2.13."""
    return torch.ops.aten._unsafe_view(t, shape)


def static_sizes(sizes: Any) -> bool:
    """Whether every size is known, without a guard. Dynamo passes a symbolic size off as an int (``isinstance`` and
    ``type`` say int while it traces); ``has_static_value`` (torch.fx.experimental.symbolic_shapes, public, checked
    on 2.11 and 2.13, which Dynamo evaluates on the size itself) tells them apart there."""
    if not torch.compiler.is_dynamo_compiling():
        return all(isinstance(s, int) for s in sizes)
    from torch.fx.experimental.symbolic_shapes import has_static_value

    return all(has_static_value(s) for s in sizes)


def size_oblivious() -> Any:
    """A context in which fake tensors decide the checks on symbolic sizes (a view's contiguity, a size of 1) for
    the general case instead of adding a guard: ``torch.fx.experimental._config.backed_size_oblivious``, checked on
    2.11 and 2.13. Not while Dynamo traces (it cannot enter this context); there it is a no-op."""
    if torch.compiler.is_dynamo_compiling():
        return contextlib.nullcontext()
    from torch.fx.experimental import _config

    return _config.patch(backed_size_oblivious=True)  # type: ignore[attr-defined]


def _constant_for_dynamo(fn: Any) -> Any:
    """``torch.compiler.assume_constant_result`` without importing Dynamo: the decorator only sets
    ``fn._dynamo_marked_constant`` (``torch._dynamo.decorators``, same on 2.11 and 2.13)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_for_dynamo
def _cpu_conv_layout_at_trace_time(
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    weight_shape: tuple[int, ...],
    weight_stride: tuple[int, ...],
    dtype: torch.dtype,
    transposed: bool,
) -> bool:
    """``_ask_aten`` on real, never-written CPU tensors of these sizes (uncommitted memory), outside the fake mode and
    any proxy tracing (non-strict torch.export traces here: the tensors would become dead nodes of its program).

    ``unset_fake_temporarily``, ``disable_proxy_modes_tracing``: same on 2.11 and 2.13."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

    with unset_fake_temporarily(), disable_proxy_modes_tracing():
        x = torch.empty_strided(shape, stride, dtype=dtype)
        weight = torch.empty_strided(weight_shape, weight_stride, dtype=dtype)
        return _ask_aten(x, weight, None, transposed)


def inductor_compiler(mode: str | None, options: dict[str, Any] | None) -> Any:
    """Inductor configured exactly as ``torch.compile(mode=..., options=...)`` configures it.

    ``torch._TorchCompileInductorWrapper(mode, options, dynamic)``: same constructor on 2.11 and 2.13.
    """
    return torch._TorchCompileInductorWrapper(mode, options, None)


@contextlib.contextmanager
def automatic_dynamic_state_kept() -> Iterator[None]:
    """Within the block, compiles record the sizes they see as usual; afterwards Dynamo's record is as before.

    Dynamo marks a size dynamic when a later compile of the same code sees another value (automatic dynamic), from a
    per-process record in ``torch._dynamo.pgo`` (``get_code_state()``: a dict keyed by code, same on 2.11 and 2.13).
    """
    from torch._dynamo import pgo

    saved = copy.deepcopy(pgo.get_code_state())
    try:
        yield
    finally:
        state = pgo.get_code_state()
        state.clear()
        state.update(saved)


def custom_graph_pass_class() -> type:
    """Inductor's ``CustomGraphPass`` base class (``torch._inductor.custom_graph_pass``: same on 2.11 and 2.13)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass

    return CustomGraphPass


def hash_files(files: tuple[str, ...], extra: str) -> str:
    """Inductor's hash of source files plus a string (``custom_graph_pass.get_hash_for_files``: 2.11, 2.13)."""
    from torch._inductor.custom_graph_pass import get_hash_for_files

    return get_hash_for_files(files, extra=extra).hex()


def current_compile_id() -> Any:
    """The id of the torch.compile in progress, None outside one (``torch._guards.CompileContext``: 2.11, 2.13)."""
    from torch._guards import CompileContext

    return CompileContext.current_compile_id()


def inductor_config() -> Any:
    """``torch._inductor.config`` (the module; its entries are read and set by name)."""
    import torch._inductor.config

    return torch._inductor.config


def lookup_backend(name: str) -> Any:
    """A registered torch.compile backend by name; ValueError naming the valid ones (``torch._dynamo``: 2.11, 2.13)."""
    from torch._dynamo import list_backends, lookup_backend

    valid = sorted(set(list_backends(exclude_tags=())) | {"inductor"})
    if name not in valid:
        raise ValueError(f"unknown inner backend {name!r}; valid backends: {', '.join(valid)}")
    return lookup_backend(name)


def convolution_pattern_pass(targets: Any, check: Any, replace: Any) -> Any:
    """A PatternMatcherPass with one pattern: a call of any of ``targets`` (ATen conv overloads), whatever its args.

    ``torch._inductor.pattern_matcher``: CallFunctionVarArgs, PatternMatcherPass, register_graph_pattern (2.11, 2.13).
    ``check`` and ``replace`` read the arguments from the matched node (overloads differ in arity and defaults).
    """
    from torch._inductor.pattern_matcher import CallFunctionVarArgs, PatternMatcherPass, register_graph_pattern

    patterns = PatternMatcherPass()
    register_graph_pattern(CallFunctionVarArgs(list(targets)), extra_check=check, pass_dict=patterns)(replace)
    return patterns


def _passes_accept_lists() -> bool:
    """Whether Inductor's custom pass entries take a list (``custom_graph_pass.get_custom_graph_passes``: 2.13, not
    2.11)."""
    from torch._inductor import custom_graph_pass

    return hasattr(custom_graph_pass, "get_custom_graph_passes")


def chain_passes(existing: Any, ours: Any) -> Any:
    """An Inductor custom-pass entry that runs ``existing`` (None, a pass, or a list of passes), then ``ours``.

    Any earlier pass of ``ours``'s class is dropped, so adding ours twice runs it once. A list where Inductor takes
    one (2.13); a chaining CustomGraphPass where it does not (2.11), whose uuid covers every pass in it.
    """
    flat = list(existing) if isinstance(existing, (list, tuple)) else [] if existing is None else [existing]
    flat = [q for p in flat for q in (p.passes if isinstance(p, _chained_pass_class()) else [p])]
    flat = [p for p in flat if not isinstance(p, type(ours))]
    if not flat:
        return ours
    if _passes_accept_lists():
        return [*flat, ours]
    return _chained_pass_class()([*flat, ours])


@functools.cache
def _chained_pass_class() -> type[Any]:
    base = custom_graph_pass_class()

    class ChainedPass(base):  # type: ignore[misc, valid-type]
        """Several custom passes in one Inductor entry, run in order (torch 2.11 takes one pass per entry)."""

        def __init__(self, passes: list[Any]):
            self.passes = passes

        def __call__(self, graph: torch.fx.Graph) -> None:
            for p in self.passes:
                p(graph)

        def uuid(self) -> Any:
            uuids = [p.uuid() if hasattr(p, "uuid") else None for p in self.passes]
            return None if any(u is None for u in uuids) else "|".join(str(u) for u in uuids)

    return ChainedPass


def aten_op(target: Any) -> tuple[str, bool, bool] | None:
    """(family name, mutable, pointwise) of an ATen OpOverload or OpOverloadPacket; None for anything else.

    ``torch._ops.OpOverload._opname``, ``._schema.is_mutable``, ``OpOverloadPacket._qualified_op_name``: 2.11, 2.13.
    """
    if isinstance(target, torch._ops.OpOverload):
        return target._opname, target._schema.is_mutable, torch.Tag.pointwise in target.tags
    if isinstance(target, torch._ops.OpOverloadPacket):
        name = target._qualified_op_name.split("::")[-1]
        return name, name.endswith("_"), False
    return None


def inductor_deterministic() -> bool:
    """Whether Inductor's deterministic mode is on, in which nothing that steers compiled code may be benchmarked.

    ``torch._inductor.config.deterministic`` (TORCHINDUCTOR_DETERMINISTIC): checked on 2.13; getattr-guarded, a
    torch without it has no such mode.
    """
    from torch._inductor import config

    return bool(getattr(config, "deterministic", False))


def inductor_cpu_timer() -> Any:
    """Inductor's CPU timer as ``(fn, ms) -> median ms`` of ``fn`` run for about ``ms`` after one warm-up call; None
    where this torch has none.

    ``torch._inductor.runtime.benchmarking.benchmarker.benchmark_cpu(fn, warmup=0, rep=ms)`` (warmup and rep are
    durations in ms; each runs ``fn`` at least once): checked on 2.13. Looked up with getattr-guards and its
    signature checked, so a torch that moved or changed it (2.11 is not installed here) gives None and the caller
    times with its own loop.
    """
    import inspect

    try:
        from torch._inductor.runtime import benchmarking
    except ImportError:
        return None
    benchmark_cpu = getattr(getattr(benchmarking, "benchmarker", None), "benchmark_cpu", None)
    if benchmark_cpu is None or not {"warmup", "rep"} <= set(inspect.signature(benchmark_cpu).parameters):
        return None
    return lambda fn, ms: benchmark_cpu(fn, warmup=0, rep=ms)


def real_tensors() -> Any:
    """A context in which new tensors are real even while a fake mode is active (a compile's, when policy "auto"
    measures). ``torch._subclasses.fake_tensor.unset_fake_temporarily``: 2.11, 2.13."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    return unset_fake_temporarily()


def module_id_of_stack_key(key: Any) -> int | None:
    """The ``id()`` of the module an ``nn_module_stack`` entry of a Dynamo graph names; None for other keys.

    Dynamo keys the entry of an inlined module by ``str(id(module))``, ``"@<n>"`` appended for its n-th call in one
    frame (``torch._dynamo.variables.nn_module.record_nn_module_stack``): checked on 2.13; 2.11 is not installed
    here, Dynamo's source has used this key since 2.1. torch.export keys its entries by name: None, and the caller
    checks the module's class as well.
    """
    match = re.fullmatch(r"(\d+)(?:@\d+)?", str(key))
    return int(match.group(1)) if match else None


# Modules that wrap a user's model and add nothing to its module paths: (module, class, attribute of the wrapped one).
_WRAPPERS = (
    ("torch._dynamo.eval_frame", "OptimizedModule", "_orig_mod"),
    ("torch.nn.parallel.data_parallel", "DataParallel", "module"),
    ("torch.nn.parallel.distributed", "DistributedDataParallel", "module"),
    ("torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel", "module"),
)


def unwrap_module(module: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside torch.compile's ``OptimizedModule`` and the DataParallel, DDP and FSDP wrappers.

    ``torch._dynamo.eval_frame.OptimizedModule._orig_mod`` is private (checked on 2.13, there since 2.0); the others'
    ``.module`` is public. A wrapper class is looked up only where its module is already imported: without it no
    such wrapper exists.
    """
    unwrapped = True
    while unwrapped:
        unwrapped = False
        for module_name, class_name, attribute in _WRAPPERS:
            wrapper = getattr(sys.modules.get(module_name), class_name, None)
            if wrapper is not None and isinstance(module, wrapper):
                module, unwrapped = getattr(module, attribute), True
    return module


def modules_being_called() -> list[torch.nn.Module]:
    """The nn.Modules whose call is on this thread's Python stack, the outermost first, each once (unwrapped).

    Read from the frames of ``nn.Module._wrapped_call_impl`` and ``_call_impl`` (their ``self``): private methods,
    checked on 2.13, there since 2.1. Under torch.compile the model the user called is among them, also while Dynamo
    compiles a frame of one of its submodules after a graph break.
    """
    # compared by identity: a code object's hash covers its constants, which Dynamo's generated code may not allow
    codes = (torch.nn.Module._wrapped_call_impl.__code__, torch.nn.Module._call_impl.__code__)
    found: list[torch.nn.Module] = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if any(frame.f_code is code for code in codes):
            module = frame.f_locals.get("self")
            if isinstance(module, torch.nn.Module):
                module = unwrap_module(module)
                if all(module is not m for m in found):
                    found.append(module)
        frame = frame.f_back
    found.reverse()
    return found


def is_conv_module(module: Any) -> TypeGuard[torch.nn.modules.conv._ConvNd]:
    """Whether ``module`` is an nn.ConvNd or nn.ConvTransposeNd, their Lazy forms and subclasses included.

    ``torch.nn.modules.conv._ConvNd``, the base class of them all: checked on 2.13, there since 1.0.
    """
    return isinstance(module, torch.nn.modules.conv._ConvNd)


@functools.cache
def autotune_custom_op(op: Any, decompositions: tuple[Any, ...]) -> None:
    """Make Inductor lower the custom ``op`` to the fastest of its own implementation and ``decompositions``, each
    called with the op's arguments and timed at compile time on random inputs of the compiled sizes; once per op.

    ``torch._inductor.kernel.custom_op.register_custom_op_autotuning(op, configs=[CustomOpConfig(fn), ...])``:
    present on 2.11 and 2.13 (run here on 2.13 only; 2.11's fallback choice wraps the op in a closure instead,
    same entry point and configs). It sets ``torch._inductor.lowering.user_lowerings[op]``; the op's implementation is
    always a choice (an extern call of the op, with the strides of its fake), and a decomposition that wins is
    inlined, so Inductor fuses it with its neighbours. Autotuning benchmarks with the default config, no max_autotune
    needed; under ``config.deterministic`` it picks without timing.
    """
    from torch._inductor.kernel.custom_op import CustomOpConfig, register_custom_op_autotuning

    register_custom_op_autotuning(op, configs=[CustomOpConfig(fn) for fn in decompositions])


def inductor_aot_compiling() -> bool:
    """Whether Inductor is compiling ahead of time (AOTInductor), whose package must run without this library.

    ``torch._inductor.virtualized.V.aot_compilation``, set around the whole of ``compile_fx_aot`` (its graph passes
    included): checked on 2.13; read with a default, so a torch without it counts as not AOT.
    """
    from torch._inductor.virtualized import V

    return bool(getattr(V, "aot_compilation", False))


def proxy_tracing() -> bool:
    """Whether make_fx (torch.export, AOTAutograd, or a user's own call) is tracing the running code.

    ``torch.fx.experimental.proxy_tensor.get_proxy_mode``: checked on 2.13, present on 2.11. Not for code that Dynamo
    traces (ask ``torch.compiler.is_compiling()`` first).
    """
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return get_proxy_mode() is not None


def forward_ad_or_functorch() -> bool:
    """Whether forward-mode AD (a dual level is open) or a torch.func transform (grad, vmap, jvp, ...) is running.

    ``torch.autograd.forward_ad._current_level`` and ``torch._C._functorch.peek_interpreter_stack``: checked on
    2.13, present on 2.11. Not for code that Dynamo traces (ask ``torch.compiler.is_dynamo_compiling()`` first).
    """
    return torch.autograd.forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None
