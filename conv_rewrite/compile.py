"""The torch.compile integration: a backend, and the rewrite as passes inside Inductor's own pipeline.

The backend and the pre-grad pass rewrite the Dynamo graph before AOTAutograd (so the backward gets GEMMs too); the
ATen pass catches convs that reach Inductor only at ATen level (torch.export, AOTInductor). The passes are
CustomGraphPasses with a uuid() over this package's code and the options (the FX graph cache keeps working), and they
run beside the user's own passes, never instead of them. Imported on first use: it loads Dynamo and Inductor.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.fx

from . import _torch_private as private
from .normalize import ATEN_TARGETS, conv_call, module_names
from .options import Options, make_options
from .record import record
from .replace import for_inductor, replace_conv
from .report import Report, ReportRow
from .transform import plan, rewrite_graph

CustomGraphPass: Any = private.custom_graph_pass_class()
Backend = Callable[..., Any]
_graph_ids = itertools.count()
# Compiles whose Dynamo graph the pre-grad pass has seen: the ATen pass leaves their convs (and their rows) alone.
_PRE_GRAD_SEEN: collections.OrderedDict[Any, None] = collections.OrderedDict()
_PRE_GRAD_SEEN_MAX = 256


def code_hash(options: Options) -> str:
    """A hash of every source file of this package and the options: what a cached compile depends on."""
    files = tuple(sorted(str(p) for p in Path(__file__).parent.glob("*.py")))
    return private.hash_files(files, extra=repr(options))


class ConvRewritePass(CustomGraphPass):
    """Inductor ``pre_grad_custom_pass``: the torch-level rewrite of the Dynamo graph."""

    def __init__(self, options: Options | None = None):
        self.options = make_options(options)

    def __call__(self, graph: torch.fx.Graph) -> None:
        compile_id = private.current_compile_id()
        if compile_id is not None:
            _PRE_GRAD_SEEN[compile_id] = None
            while len(_PRE_GRAD_SEEN) > _PRE_GRAD_SEEN_MAX:
                _PRE_GRAD_SEEN.popitem(last=False)
        gm = graph.owning_module
        if gm is None:
            return
        where = f"inductor pre-grad graph {next(_graph_ids)}"
        with module_names(private.modules_being_called()), for_inductor(not private.inductor_aot_compiling()):
            report = rewrite_graph(gm, self.options, where=where)
        record(report, where)

    def uuid(self) -> str:
        return code_hash(self.options)


_aten_state: contextvars.ContextVar[tuple[torch.fx.GraphModule, Options, list[tuple[int, ReportRow]], str]] = (
    contextvars.ContextVar("conv_rewrite_aten_pass")
)


def _check(match: Any) -> bool:
    """The pattern's extra_check: plan the matched conv (decide + layout) and keep its row."""
    gm, options, rows, where = _aten_state.get()
    node = match.output_node()
    call = conv_call(node, gm)
    if call is None:
        return False
    decision, layout = plan(gm, node, call, options)
    rows.append((_position(node), ReportRow.of(call, decision, layout, where)))
    if decision.rewrite:
        node.meta["conv_rewrite_layout"] = layout
    return decision.rewrite


def _replace(match: Any, *_args: Any, **_kwargs: Any) -> None:
    """The pattern's replacement: the same ``replace_conv`` that ``rewrite`` uses, on any ATen graph's meta."""
    gm = _aten_state.get()[0]
    node = match.output_node()
    layout = node.meta.pop("conv_rewrite_layout")
    call = conv_call(node, gm)
    assert call is not None, "the extra_check matched a convolution"
    replace_conv(gm, node, call, layout)


def _position(node: torch.fx.Node) -> int:
    return next(i for i, n in enumerate(node.graph.nodes) if n is node)


@functools.cache
def _aten_patterns() -> Any:
    """Every ATen conv overload, registered once (as Inductor registers its own passes)."""
    return private.convolution_pattern_pass(ATEN_TARGETS, _check, _replace)


class AtenConvRewritePass(CustomGraphPass):
    """Inductor ``post_grad_custom_pre_pass`` (or any ATen graph, via ``apply``: make_fx, export): rewrites ATen convs.

    Inductor's post-grad graphs hold ``aten.convolution``; export and make_fx graphs ``aten.conv2d`` and the like.
    """

    def __init__(self, options: Options | None = None):
        self.options = make_options(options)

    def uuid(self) -> str:
        return code_hash(self.options)

    def __call__(self, graph: torch.fx.Graph) -> None:
        gm = graph.owning_module
        if gm is None or private.current_compile_id() in _PRE_GRAD_SEEN:
            return  # the pre-grad pass decided (and reported) every conv of this compile
        where = f"inductor post-grad graph {next(_graph_ids)}"
        with module_names(private.modules_being_called()), for_inductor(not private.inductor_aot_compiling()):
            self.apply(gm, where=where)

    def apply(self, gm: torch.fx.GraphModule, where: str = "aten pass") -> Report:
        """Run the pattern over ``gm``'s graph (any ATen graph with ``meta['val']``); records and returns the report."""
        if not isinstance(gm, torch.fx.GraphModule):
            raise TypeError(f"apply() expects a torch.fx.GraphModule, got {type(gm).__qualname__}")
        rows: list[tuple[int, ReportRow]] = []
        token = _aten_state.set((gm, self.options, rows, where))
        try:
            _aten_patterns().apply(gm.graph)
        finally:
            _aten_state.reset(token)
        report = Report([row for _, row in sorted(rows, key=lambda item: item[0])])
        if report.rewritten:
            gm.graph.lint()
            gm.recompile()
        record(report, where)
        return report


_CONFIG_NAMES = ("pre_grad_custom_pass", "post_grad_custom_pre_pass")


def inductor_options(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Inductor config entries that add the rewrite: ``torch.compile(model, options=conv_rewrite.inductor_options())``.

    Given to torch.compile they reach the forward and the lazily compiled backward alike. Passes already set in
    Inductor's config (yours, or another library's) keep running, before ours.
    """
    opts = make_options(options, **kwargs)
    ours = {"pre_grad_custom_pass": ConvRewritePass(opts), "post_grad_custom_pre_pass": AtenConvRewritePass(opts)}
    config = private.inductor_config()
    return {name: private.chain_passes(getattr(config, name), ours[name]) for name in _CONFIG_NAMES}


_saved: list[dict[str, Any]] = []


def install_inductor_pass(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> None:
    """Add the rewrite to Inductor globally, for every later compile in this process, until uninstalled.

    The passes already configured keep running; installing again replaces only ours.
    """
    uninstall_inductor_pass()
    config = private.inductor_config()
    _saved.append({name: getattr(config, name) for name in _CONFIG_NAMES})
    for name, value in inductor_options(options, **kwargs).items():
        setattr(config, name, value)


def uninstall_inductor_pass() -> None:
    """Undo ``install_inductor_pass``: Inductor's passes are exactly what they were before."""
    config = private.inductor_config()
    while _saved:
        for name, value in _saved.pop().items():
            setattr(config, name, value)


class ConvRewriteBackend:
    """A torch.compile backend that rewrites patchify convs, then compiles with ``inner``.

    ``report`` holds the rows of the last graphs this backend compiled (at most ``MAX_GRAPHS``). ``mode=`` and
    ``options=`` given to torch.compile reach ``inner``: for Inductor they mean what they mean for torch.compile.
    """

    MAX_GRAPHS = 64

    def __init__(self, inner: str | Backend = "inductor", options: Options | None = None):
        if not (isinstance(inner, str) or callable(inner)):
            raise TypeError(f"inner must be a backend name or a callable, got {type(inner).__name__}")
        if isinstance(inner, str) and inner != "inductor":
            inner = private.lookup_backend(inner)
        self.inner = inner
        self.options = make_options(options)
        self._reports: collections.deque[Report] = collections.deque(maxlen=self.MAX_GRAPHS)

    @property
    def report(self) -> Report:
        merged = Report()
        for report in self._reports:
            merged.extend(report)
        return merged

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any], **compile_kwargs: Any) -> Any:
        where = f"dynamo graph {next(_graph_ids)}"
        with module_names(private.modules_being_called()), for_inductor(self.inner == "inductor"):
            report = rewrite_graph(gm, self.options, where=where)
        inner = self.inner
        if isinstance(inner, str):  # "inductor": any other name was looked up in __init__
            compiled = private.inductor_compiler(compile_kwargs.get("mode"), compile_kwargs.get("options"))(
                gm, example_inputs
            )
        else:
            compiled = inner(gm, example_inputs, **compile_kwargs)
        # after the inner compile: a graph Dynamo restarts is not counted twice
        self._reports.append(report)
        record(report, where)
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


@contextlib.contextmanager
def inductor_pass(options: Options | dict[str, Any] | None = None, **kwargs: Any) -> Iterator[None]:
    """Within the block, every graph Inductor compiles gets the rewrite (a config patch of ``inductor_options``).

    A backward compiled lazily after the block has no conv to rewrite: the forward was rewritten before autograd.
    """
    with private.inductor_config().patch(inductor_options(options, **kwargs)):
        yield
