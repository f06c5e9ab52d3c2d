"""Decide: whether a normalized conv is a patchify conv the rewrite computes exactly, and if not, why.

A pure function of the ConvCall and the Options, shared by every entry point: one source of truth for "qualifies".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .normalize import ConvCall
from .options import Options


@dataclass(frozen=True)
class Decision:
    """``rewrite`` says what to do; ``reason`` says why, in words a user can act on."""

    rewrite: bool
    reason: str


def _fmt(values: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(v) for v in values) + ")"


def _padding(call: ConvCall) -> tuple[tuple[int, ...] | None, str]:
    """The conv's padding as ints per dim, or (None, reason) when the rewrite cannot reproduce it."""
    if isinstance(call.padding, str):
        if call.padding == "valid" or (call.padding == "same" and all(k == 1 for k in call.known_kernel)):
            return (0,) * len(call.known_kernel), ""
        return None, f"padding '{call.padding}'"
    if call.transposed and call.padding_mode != "zeros":
        return None, f"padding_mode {call.padding_mode}"
    return call.padding, ""


def qualifies(call: ConvCall) -> Decision:
    """Whether the conv is computed exactly by the GEMM form: stride == kernel, no dilation/groups.

    A conv goes to ``patchify_conv`` (padding by any mode first); a transposed conv to ``unpatchify_conv_transpose``.
    """
    if call.overridden_forward:
        return Decision(False, f"{call.overridden_forward} overrides forward")
    if call.output_size_given:
        return Decision(False, "output_size given at call time")
    if call.hooks:
        return Decision(False, f"{call.op} has {', '.join(call.hooks)} hooks")
    if call.kernel is None:
        return Decision(False, "kernel unknown: the graph records no static shape for the weight")
    for name in ("stride", "padding", "dilation", "output_padding"):
        value = getattr(call, name)
        if not isinstance(value, str) and not all(isinstance(v, int) for v in value):
            return Decision(False, f"{name} {tuple(value)} is computed at run time")
    if call.groups != 1:
        return Decision(False, f"groups {call.groups}")
    if any(d != 1 and k > 1 for d, k in zip(call.dilation, call.kernel)):
        return Decision(False, f"dilation {_fmt(call.dilation)}")
    padding, problem = _padding(call)
    if padding is None:
        return Decision(False, problem)
    if call.stride != call.kernel:
        return Decision(False, f"stride {_fmt(call.stride)} != kernel {_fmt(call.kernel)}")
    reason = ("transposed, " if call.transposed else "") + f"stride == kernel {_fmt(call.kernel)}"
    if any(padding):
        mode = "" if call.transposed or call.padding_mode == "zeros" else f" {call.padding_mode}"
        reason += f", padding {_fmt(padding)}{mode}"
    if call.transposed and any(call.output_padding):
        reason += f", output_padding {_fmt(call.output_padding)}"
    return Decision(True, reason)


def _cuda_cost_model(call: ConvCall) -> Decision:
    """Fitted on the H100 op-level benchmark (bench/RESULTS.md): the GEMM form won 50 of 52 cases, 1-, 2- and 3-d.

    The two losses are one shape: a channel-first Conv1d whose patches are wider than its output (wav2vec2 layer 5,
    C*k = 1024 > O = 512: forward 0.84x), where the permute is a narrow transpose that costs more than the GEMM saves.
    A Conv1d with a narrower patch (ACE-Step, C*k = 384 < O = 2048) won 3.5x.
    """
    patch_width = call.in_channels * math.prod(call.known_kernel) if isinstance(call.in_channels, int) else None
    if call.dims == 1 and not call.transposed and patch_width is not None and patch_width > (call.out_channels or 0):
        return Decision(
            False, f"auto: cuda cost model: Conv1d with C*k = {patch_width} > O = {call.out_channels} measured slower"
        )
    return Decision(True, "auto: cuda cost model (the GEMM form won 50 of 52 H100 cases, bench/RESULTS.md)")


_CLEAR = 0.9  # policy "auto" picks a form only when its median is below this fraction of the other's


def _auto(call: ConvCall) -> Decision:
    """Policy "auto": the cost model on CUDA, a cached micro-benchmark elsewhere, rewrite where nothing is known.

    A measured difference within the noise of a busy machine (no clear win) keeps the conv as it was.
    """
    if call.device is None:
        return Decision(True, "auto: device unknown, rewritten")
    if call.device.startswith("cuda"):  # the cost model needs the weight's shape only (convert_ knows no input)
        return _cuda_cost_model(call)
    if call.input_shape is None or not all(isinstance(s, int) for s in call.input_shape):
        return Decision(True, "auto: input shape not static, rewritten")
    from . import measure

    problem = measure.unmeasurable(call)
    if problem is not None:
        return Decision(True, f"auto: {problem}, rewritten")
    gemm_ms, conv_ms = measure.timings(call)
    measured = f"GEMM {gemm_ms:.2f} ms vs conv {conv_ms:.2f} ms ({call.device}, {call.dtype})"
    if gemm_ms < _CLEAR * conv_ms:
        return Decision(True, f"auto: {measured}")
    if conv_ms < _CLEAR * gemm_ms:
        return Decision(False, f"auto: {measured}")
    return Decision(False, f"auto: no clear difference, {measured}: conv kept")


def decide(call: ConvCall, options: Options) -> Decision:
    """The decision for one conv under ``options``."""
    decision = qualifies(call)
    if decision.rewrite and options.policy == "never":
        return Decision(False, f"policy 'never' ({decision.reason})")
    if decision.rewrite and options.policy == "auto":
        return _auto(call)
    return decision
