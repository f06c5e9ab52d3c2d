"""Every use of a private PyTorch API, in one place, with the versions it was checked on (2.11, 2.13)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

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
    out = []
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


def conv_returns_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a stride == kernel conv of ``x`` returns the channels-last layout (1-d: (B, O, L) with O innermost).

    Eager: ask ATen as FakeTensor does (``torch._C._select_conv_backend``,
    ``torch._C._conv_determine_backend_memory_format``: same signatures on 2.11 and 2.13; ATen runs a 1-d conv as a
    2-d one on a contiguous input). While tracing they cannot be called; there the rule of cuDNN and oneDNN holds:
    channels-last input or weight, channels-last output.
    """
    dims = weight.dim() - 2
    weight_2d = weight.unsqueeze(2) if dims == 1 else weight
    if torch.compiler.is_compiling():
        fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
        inputs = (weight_2d,) if dims == 1 else (x, weight)
        return any(t.is_contiguous(memory_format=fmt) and not t.is_contiguous() for t in inputs)
    zeros = [0] * dims
    backend = torch._C._select_conv_backend(x, weight, bias, list(weight.shape[2:]), zeros, [1] * dims, False, zeros, 1)
    x_2d = x
    if dims == 1:
        x_2d = x.unsqueeze(-2) if x.is_contiguous() else torch.empty(x.shape[:-1] + (1, x.shape[-1]), device="meta")
    fmt = torch._C._conv_determine_backend_memory_format(x_2d, weight_2d, backend)
    return fmt in (torch.channels_last, torch.channels_last_3d)


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
