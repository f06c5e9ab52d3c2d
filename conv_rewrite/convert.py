"""Model-level conversion: the patchify convs of an nn.Module run as reshape + permute + one GEMM, in place.

For models that never reach a compiler: same module objects, parameters, state_dict and hooks; ``restore_`` undoes it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .decide import Decision, decide
from .normalize import ConvCall, module_conv_call
from .options import Options, make_options
from .patchify import patchify_conv_like_conv, plain_autograd
from .record import record
from .replace import AS_CONV
from .report import Report, ReportRow

# nn.Conv1d/2d/3d.forward is ``self._conv_forward(input, self.weight, self.bias)``. Converting sets the instance
# attribute ``_conv_forward`` to a top-level function of those operands (it pickles by reference): the class,
# ``forward`` (and any wrapper a hook library put on it), hooks, parameters and repr are untouched.
_ATTR = "_conv_forward"
_WHERE = "convert_"


# The converted conv is one operator whose only kernel is CompositeImplicitAutograd. Dynamo records a call of it as
# it is, without tracing the Python inside, where it would see symbolic sizes as plain ints (and specialize them, or
# break the graph); eager, AOTAutograd, make_fx and torch.export run that Python on the tensors they hold, SymInts
# included, so each trace gets the plain torch ops of patchify_conv_like_conv and no custom op.
# A call carries ``_SOURCE``, a hash of this package's code: caches keyed on the graph that holds the call
# (AOTAutograd's, which accepts any operator) then never serve a program traced by another version of its Python.
_LIB = torch.library.Library("conv_rewrite", "FRAGMENT")
_LIB.define(
    "converted_conv(Tensor x, Tensor weight, Tensor? bias, SymInt[] padding, str padding_mode, str source) -> Tensor"
)
_SOURCE = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()[:16]


def _converted_conv_kernel(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: Sequence[int], padding_mode: str
) -> torch.Tensor:
    # autotune: where a compile meets the forms the sizes do not rank, Inductor on CUDA times them against the conv;
    # eager never meets them (it folds the bias whatever the alignment)
    return patchify_conv_like_conv(x, weight, bias, padding=tuple(padding), padding_mode=padding_mode, autotune=True)


def _op_kernel(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: Sequence[int],
    padding_mode: str,
    source: str,
) -> torch.Tensor:
    return _converted_conv_kernel(x, weight, bias, padding, padding_mode)


_LIB.impl("converted_conv", _op_kernel, "CompositeImplicitAutograd")


def converted_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    padding: Sequence[int] = (),
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """A converted module's ``_conv_forward``: the conv with stride == kernel as ``patchify_conv_like_conv``.

    The plain ops run directly under torch.export (it keeps such ops: its program must load without this library)
    and under torch.func transforms and forward-mode AD (the op has no batching rule: vmap would run it per sample).
    """
    if plain_autograd():
        return _converted_conv_kernel(x, weight, bias, padding, padding_mode)
    return torch.ops.conv_rewrite.converted_conv(x, weight, bias, list(padding), padding_mode, _SOURCE)


def _converted_forward(call: ConvCall) -> Callable[..., torch.Tensor]:
    padding = (0,) * len(call.known_kernel) if isinstance(call.padding, str) else tuple(call.padding)
    return functools.partial(converted_conv, padding=padding, padding_mode=call.padding_mode)


def _is_converted(module: nn.Module) -> bool:
    fn = module.__dict__.get(_ATTR)
    return isinstance(fn, functools.partial) and fn.func is converted_conv


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _decision(module: nn.Module, call: ConvCall, options: Options, selected: bool) -> Decision:
    if not selected:
        return Decision(False, "excluded by filter_fn")
    decision = decide(call, options)
    if decision.rewrite and call.transposed:
        return Decision(False, f"{call.op} is not converted in place (its forward calls the conv); rewrite converts it")
    if decision.rewrite and _ATTR in module.__dict__ and not _is_converted(module):
        return Decision(False, f"{_ATTR} is replaced on the instance")
    return decision


def convert_(
    model: nn.Module,
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    options: Options | dict[str, Any] | None = None,
    **option_kwargs: Any,
) -> Report:
    """Make every qualifying conv module of ``model`` (the model itself included) compute the GEMM form, in place.

    ``filter_fn(module, fqn)`` is called for each conv module; False leaves it alone. Options as for ``rewrite``.
    Returns the Report: one row per conv module, node and module being its fqn, its input shape unknown.

    The model ends as this call selects, whatever earlier calls did: a module converted before that this call does
    not select (``policy="never"``, a ``filter_fn`` that now excludes it, a policy that now keeps the conv) is
    restored to the conv and reported as skipped, its reason saying that the earlier conversion was undone. The
    report always describes the model's state.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_() expects a torch.nn.Module, got {_type_name(model)}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be a callable (module, fqn) -> bool, got {_type_name(filter_fn)}")
    opts = make_options(options, **option_kwargs)
    report = Report()
    for fqn, module in model.named_modules():
        call = module_conv_call(module, fqn)
        if call is None:
            continue
        decision = _decision(module, call, opts, filter_fn is None or bool(filter_fn(module, fqn)))
        if decision.rewrite:
            setattr(module, _ATTR, _converted_forward(call))
        elif _is_converted(module):
            delattr(module, _ATTR)
            decision = Decision(False, f"{decision.reason}; the earlier conversion was undone")
        report.rows.append(ReportRow.of(call, decision, AS_CONV, _WHERE))
    record(report, _WHERE)
    return report


def restore_(model: nn.Module) -> list[str]:
    """Undo ``convert_`` on ``model`` in place: its converted convs run the conv again. Returns their fqns."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"restore_() expects a torch.nn.Module, got {_type_name(model)}")
    restored = []
    for fqn, module in model.named_modules():
        if _is_converted(module):
            delattr(module, _ATTR)
            restored.append(fqn)
    return restored
