"""Decide: whether a normalized conv is a patchify conv the rewrite computes exactly, and if not, why.

A pure function of the ConvCall and the Options, shared by every entry point: one source of truth for "qualifies".
"""

from __future__ import annotations

from dataclasses import dataclass

from .conv_call import ConvCall
from .options import Options


@dataclass(frozen=True)
class Decision:
    """``rewrite`` says what to do; ``reason`` says why, in words a user can act on."""

    rewrite: bool
    reason: str


def _fmt(values: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")"


def qualifies(call: ConvCall) -> Decision:
    """Whether the conv is computed exactly by ``patchify_conv``: stride == kernel, no padding/dilation/groups."""
    if call.overridden_forward:
        return Decision(False, f"{call.overridden_forward} overrides forward")
    if call.hooks:
        return Decision(False, f"{call.op} has {', '.join(call.hooks)} hooks")
    if call.transposed:
        return Decision(False, "transposed")
    if call.kernel is None:
        return Decision(False, "kernel unknown: the graph records no static shape for the weight")
    if call.groups != 1:
        return Decision(False, f"groups {call.groups}")
    if any(d != 1 and k > 1 for d, k in zip(call.dilation, call.kernel)):
        return Decision(False, f"dilation {_fmt(call.dilation)}")
    if isinstance(call.padding, str):
        if call.padding != "valid":
            return Decision(False, f"padding '{call.padding}'")
    elif any(call.padding):
        if call.padding_mode != "zeros":
            return Decision(False, f"padding_mode {call.padding_mode} with padding {_fmt(call.padding)}")
        return Decision(False, f"padding {_fmt(call.padding)}")
    if call.stride != call.kernel:
        return Decision(False, f"stride {_fmt(call.stride)} != kernel {_fmt(call.kernel)}")
    return Decision(True, f"stride == kernel {_fmt(call.kernel)}")


def decide(call: ConvCall, options: Options) -> Decision:
    """The decision for one conv under ``options``."""
    decision = qualifies(call)
    if decision.rewrite and options.policy == "never":
        return Decision(False, f"policy 'never' ({decision.reason})")
    return decision
