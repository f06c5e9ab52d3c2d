"""The ways of running one patchify conv (or one model) that the benchmark compares side by side.

Each variant turns an eager module into the callable that is timed: eager conv, torch.compile default (Inductor's
conv), the rewrite as a backend and as an Inductor pass, the same written by hand, the converted module in eager
mode. The bare GEMM floor is not a module transform and is built by ``ops.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import conv_rewrite

MAX_AUTOTUNE = "max-autotune-no-cudagraphs"


class HandPatchify(nn.Module):
    """The rewrite written by hand, independently of the library: crop, reshape, permute, linear, permute back.

    Returns the free channels-last view, as a user replacing the conv by hand would write it.
    """

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.kernel = tuple(conv.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.kernel)
        batch, channels = x.shape[:2]
        outs = [x.shape[2 + i] // k for i, k in enumerate(self.kernel)]
        split: list[int] = [batch, channels]
        for i, (o, k) in enumerate(zip(outs, self.kernel)):
            x = x.narrow(2 + i, 0, o * k)
            split += [o, k]
        rows = x.reshape(split).permute(0, *range(2, 2 + 2 * n, 2), 1, *range(3, 3 + 2 * n, 2))
        rows = rows.reshape(batch * math.prod(outs), -1)
        y = F.linear(rows, self.weight.reshape(self.weight.shape[0], -1), self.bias)
        return y.view(batch, *outs, -1).permute(0, n + 1, *range(1, n + 1))


class Tokens(nn.Module):
    """The model's own consumer of a patch embedding: (B, D, o1..oN) -> (B, L, D)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).flatten(2).transpose(1, 2)


def register_backend_name() -> None:
    """Make ``backend="conv_rewrite"`` work when the package runs from a checkout (no entry point installed)."""
    import importlib

    from torch._dynamo import list_backends, register_backend

    if "conv_rewrite" not in list_backends(exclude_tags=()):
        register_backend(importlib.import_module("conv_rewrite.backend").conv_rewrite_backend, "conv_rewrite")


def has_convert() -> bool:
    """Whether this checkout has the eager module conversion (``conv_rewrite.convert_``)."""
    return hasattr(conv_rewrite, "convert_")


def _pass_options(mode: str | None) -> dict[str, Any]:
    extra = torch._inductor.list_mode_options(mode) if mode else {}
    return {**extra, **conv_rewrite.inductor_options()}


def _converted(module: nn.Module) -> nn.Module:
    conv_rewrite.convert_(module)
    return module


@dataclass(frozen=True)
class Variant:
    """A named way to run a module. ``compiled`` variants are timed for compile time too."""

    name: str
    label: str
    compiled: bool
    make: Callable[[nn.Module], Callable[..., Any]]
    hand: bool = False


def _variants(mode: str | None, suffix: str, label: str) -> list[Variant]:
    compile_kw: dict[str, Any] = {"mode": mode} if mode else {}
    return [
        Variant(
            f"inductor{suffix}", f"torch.compile{label} (Inductor conv)", True, lambda m: torch.compile(m, **compile_kw)
        ),
        Variant(
            f"rw_backend{suffix}",
            f'backend="conv_rewrite"{label}',
            True,
            lambda m: torch.compile(m, backend="conv_rewrite", **compile_kw),
        ),
        Variant(
            f"rw_pass{suffix}",
            f"options=inductor_options(){label}",
            True,
            lambda m: torch.compile(m, options=_pass_options(mode)),
        ),
        Variant(
            f"hand{suffix}", f"hand rewrite, torch.compile{label}", True, lambda m: torch.compile(m, **compile_kw), True
        ),
    ]


def op_variants(max_autotune: bool) -> list[Variant]:
    """The op-level columns, in table order (the floor is added by ops.py)."""
    out = [Variant("conv", "eager conv (cuDNN / oneDNN)", False, lambda m: m)]
    out += _variants(None, "", "")
    if max_autotune:
        out += _variants(MAX_AUTOTUNE, "_ma", f" {MAX_AUTOTUNE}")
    if has_convert():
        out.append(Variant("convert", "convert_(module), eager", False, _converted))
        out.append(Variant("convert_compiled", "convert_(module), then torch.compile", True, _converted_compiled))
    return out


def _converted_compiled(module: nn.Module) -> Callable[..., Any]:
    return torch.compile(_converted(module))


def model_variants() -> list[Variant]:
    """The model-level columns: eager, default torch.compile, the two rewrite forms, and convert_ when present."""
    out = [Variant("eager", "eager", False, lambda m: m)]
    out += [v for v in _variants(None, "", "") if not v.hand]
    if has_convert():
        out.append(Variant("convert", "convert_(model), eager", False, _converted))
    return out


def prepare(variant: Variant, conv: nn.Module, tokens: bool) -> Callable[..., Any]:
    """The callable for ``variant`` over a private copy of ``conv`` (hand-written form and consumer applied)."""
    module = copy.deepcopy(conv)
    if variant.hand:
        module = HandPatchify(module)
    if tokens:
        module = Tokens(module)
    return variant.make(module)
