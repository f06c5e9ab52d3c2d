"""The torch.compile backend: rewrite the Dynamo graph (before AOTAutograd, so the backward gets GEMMs too),
then hand it to Inductor or any other backend.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from ._torch_private import inductor_compiler
from .options import Options, make_options
from .report import Report
from .rewrite import rewrite

Backend = Callable[..., Any]
_graph_ids = itertools.count()


class ConvRewriteBackend:
    """A torch.compile backend that rewrites patchify convs, then compiles with ``inner``.

    ``report`` holds the rows of every graph this backend has compiled. ``mode=`` and ``options=`` given to
    torch.compile reach ``inner``: for Inductor they mean what they mean for ``torch.compile`` itself.
    """

    def __init__(self, inner: str | Backend = "inductor", options: Options | None = None):
        if not (isinstance(inner, str) or callable(inner)):
            raise TypeError(f"inner must be a backend name or a callable, got {type(inner).__name__}")
        if isinstance(inner, str) and inner != "inductor":
            from torch._dynamo import list_backends, lookup_backend

            valid = sorted(set(list_backends(exclude_tags=())) | {"inductor"})
            if inner not in valid:
                raise ValueError(f"unknown inner backend {inner!r}; valid backends: {', '.join(valid)}")
            inner = lookup_backend(inner)
        self.inner = inner
        self.options = options or Options()
        self.report = Report()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any], **compile_kwargs: Any) -> Any:
        report = rewrite(gm, self.options, where=f"dynamo graph {next(_graph_ids)}")
        if self.inner == "inductor":
            compiled = inductor_compiler(compile_kwargs.get("mode"), compile_kwargs.get("options"))(gm, example_inputs)
        else:
            compiled = self.inner(gm, example_inputs, **compile_kwargs)
        self.report.extend(report)  # after the inner compile: a graph Dynamo restarts is not counted twice
        return compiled

    def __repr__(self) -> str:
        inner = self.inner if isinstance(self.inner, str) else getattr(self.inner, "__name__", repr(self.inner))
        return f"conv_rewrite.backend(inner={inner!r}, policy={self.options.policy!r})"


def backend(
    inner: str | Backend = "inductor", *, options: Options | dict[str, Any] | None = None, **kwargs: Any
) -> ConvRewriteBackend:
    """A configured backend: ``torch.compile(model, backend=conv_rewrite.backend(inner="aot_eager"))``.

    ``inner`` is a registered backend name ("inductor", "aot_eager", "eager", ...) or a backend callable.
    """
    return ConvRewriteBackend(inner, make_options(options, **kwargs))


def conv_rewrite_backend(gm: torch.fx.GraphModule, example_inputs: list[Any], **compile_kwargs: Any) -> Any:
    """The backend registered as ``"conv_rewrite"`` (entry point ``torch_dynamo_backends``): rewrite, then Inductor."""
    return _default_backend()(gm, example_inputs, **compile_kwargs)


@functools.cache
def _default_backend() -> ConvRewriteBackend:
    """Made at first use, so the default options (CONV_REWRITE_POLICY) are read then, not at import."""
    return ConvRewriteBackend()
