"""The rewrite inside Inductor's own pipeline, for users of the default backend.

A pre-grad pass rewrites the Dynamo graph before AOTAutograd (so the backward gets GEMMs too) and an ATen
pass (aten_pass.py) catches convs that reach Inductor only at ATen level (torch.export / AOTInductor). Both are
CustomGraphPass with a uuid() over this package's code and the options, so the FX graph cache keeps working.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from .options import Options, make_options
from .rewrite import rewrite

_graph_ids = itertools.count()


def code_hash(options: Options) -> str:
    """A hash of every source file of this package and the options: what a cached compile depends on."""
    files = tuple(sorted(str(p) for p in Path(__file__).parent.glob("*.py")))
    return get_hash_for_files(files, extra=repr(options)).hex()


class ConvRewritePass(CustomGraphPass):
    """Inductor ``pre_grad_custom_pass``: the torch-level rewrite of the Dynamo graph."""

    def __init__(self, options: Options | None = None):
        self.options = options or Options()

    def __call__(self, graph: torch.fx.Graph) -> None:
        rewrite(graph.owning_module, self.options, where=f"inductor pre-grad graph {next(_graph_ids)}")

    def uuid(self) -> str:
        return code_hash(self.options)


def inductor_options(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Inductor config entries that add the rewrite: ``torch.compile(model, options=conv_rewrite.inductor_options())``.

    Given to torch.compile they reach the forward and the lazily compiled backward alike.
    """
    from .aten_pass import AtenConvRewritePass

    opts = make_options(options, **kwargs)
    return {"pre_grad_custom_pass": ConvRewritePass(opts), "post_grad_custom_pre_pass": AtenConvRewritePass(opts)}


@contextlib.contextmanager
def inductor_pass(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> Iterator[None]:
    """Within the block, every graph Inductor compiles gets the rewrite (config.patch of ``inductor_options``).

    A backward compiled lazily after the block has no conv to rewrite: the forward was rewritten before autograd.
    """
    with torch._inductor.config.patch(inductor_options(options, **kwargs)):
        yield


_saved: list[dict[str, Any]] = []


def install_inductor_pass(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Add the rewrite to Inductor globally, for every later compile in this process, until uninstalled."""
    entries = inductor_options(options, **kwargs)
    config = torch._inductor.config
    if not _saved:
        _saved.append({name: getattr(config, name) for name in entries})
    for name, value in entries.items():
        setattr(config, name, value)


def uninstall_inductor_pass() -> None:
    """Undo ``install_inductor_pass``: Inductor's passes are what they were before."""
    config = torch._inductor.config
    for name, value in (_saved.pop() if _saved else {}).items():
        setattr(config, name, value)
