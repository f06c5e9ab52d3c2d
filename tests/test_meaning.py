"""Meaning is kept under every entry point: random consumer chains after a patch conv compute eager's values and
return eager's strides and aliasing (DESIGN.md section 10).

Each example is a conv followed by 1-4 ops, written as Python source so that every tracer sees ordinary code: views
and reshapes, transposes and permutes, contiguous, narrow/select, unsqueeze, pointwise ops, an in-place op on any
alias, as_strided over the whole storage; the function returns any subset of what it made. The ops are drawn against
the eager tensors, so every chain runs in eager; whether a reshape aliases or copies there is part of its meaning.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import TOL, one_thread, shape_propagated  # noqa: F401 (one_thread: autouse)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import conv_rewrite

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")

FP64 = torch.float64
CONVS = {1: (nn.Conv1d, (2,)), 2: (nn.Conv2d, (2, 2)), 3: (nn.Conv3d, (1, 2, 2))}
# Input sizes per dims; some give output dims of size 1, some leave a remainder the conv never reads.
SPATIAL = {1: [(2,), (3,), (6,), (7,)], 2: [(2, 2), (2, 5), (4, 4), (6, 3)], 3: [(1, 2, 2), (2, 4, 5), (1, 2, 6)]}
CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


@dataclass(frozen=True)
class Case:
    """A patch conv, its input, and the consumer chain as the source of ``chain(y)``."""

    dims: int
    batch: int
    spatial: tuple[int, ...]
    channels_last: bool
    grad: bool
    source: str

    def conv(self) -> nn.Module:
        cls, kernel = CONVS[self.dims]
        torch.manual_seed(0)
        return cls(3, 8, kernel, stride=kernel).double()

    def input(self) -> torch.Tensor:
        x = torch.randn(self.batch, 3, *self.spatial, dtype=FP64, generator=torch.Generator().manual_seed(1))
        return x.contiguous(memory_format=CHANNELS_LAST[self.dims]) if self.channels_last else x

    def model(self) -> nn.Module:
        return ConvChain(self.conv(), chain_function(self.source))

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        layout = "channels_last" if self.channels_last else "contiguous"
        cls, kernel = CONVS[self.dims]
        conv = f"{cls.__name__}(3, 8, {kernel}) on {layout} {(self.batch, 3, *self.spatial)}"
        return f"Case({conv}, {'with' if self.grad else 'without'} grad):\n{self.source}"


class ConvChain(nn.Module):
    def __init__(self, conv: nn.Module, chain: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.conv = conv
        self.chain = chain

    def forward(self, x: torch.Tensor) -> Any:
        return self.chain(self.conv(x))


def chain_function(source: str) -> Callable[[torch.Tensor], Any]:
    namespace: dict[str, Any] = {"torch": torch, "F": F}
    exec(compile(source, "<consumer chain>", "exec"), namespace)
    return namespace["chain"]


# --- the ops: each draws an expression over a variable, given that variable's eager tensor -----------------------


def _dim(draw: Any, t: torch.Tensor) -> int:
    return draw(st.integers(0, t.dim() - 1))


def _narrow(draw: Any, name: str, t: torch.Tensor) -> str:
    d = _dim(draw, t)
    start = draw(st.integers(0, max(t.shape[d] - 1, 0)))
    return f"{name}.narrow({d}, {start}, {draw(st.integers(1, max(t.shape[d] - start, 1)))})"


def _permute(draw: Any, name: str, t: torch.Tensor) -> str:
    return f"{name}.permute({', '.join(map(str, draw(st.permutations(range(t.dim())))))})"


EXPRESSIONS: dict[str, Callable[[Any, str, torch.Tensor], str]] = {
    "view(-1)": lambda draw, s, t: f"{s}.view(-1)",
    "view(B, -1)": lambda draw, s, t: f"{s}.view({t.shape[0]}, -1)",
    "view(B, C, -1)": lambda draw, s, t: f"{s}.view({t.shape[0]}, {t.shape[1]}, -1)",
    "reshape(-1)": lambda draw, s, t: f"{s}.reshape(-1)",
    "reshape(B, -1)": lambda draw, s, t: f"{s}.reshape({t.shape[0]}, -1)",
    "flatten(d)": lambda draw, s, t: f"{s}.flatten({_dim(draw, t)})",
    "transpose": lambda draw, s, t: f"{s}.transpose({_dim(draw, t)}, {_dim(draw, t)})",
    "permute": _permute,
    "contiguous": lambda draw, s, t: f"{s}.contiguous()",
    "narrow": _narrow,
    "select": lambda draw, s, t: f"{s}.select({_dim(draw, t)}, 0)",
    "unsqueeze": lambda draw, s, t: f"{s}.unsqueeze({draw(st.integers(0, t.dim()))})",
    "add": lambda draw, s, t: f"{s} + 1.5",
    "mul": lambda draw, s, t: f"{s} * 2.0",
    "gelu": lambda draw, s, t: f"F.gelu({s})",
    "as_strided": lambda draw, s, t: f"torch.as_strided({s}, ({t.numel()},), (1,), 0)",
}
IN_PLACE = {"mul_": "{}.mul_(2.0)", "add_": "{}.add_(1.0)"}
OPS = sorted(EXPRESSIONS) + sorted(IN_PLACE)


@dataclass(frozen=True)
class Setup:
    """The conv and its input: dims, batch, spatial sizes, memory format."""

    dims: int
    batch: int
    spatial: tuple[int, ...]
    channels_last: bool

    def has_size_one_output_dim(self) -> bool:
        return self.batch == 1 or any(s // k == 1 for s, k in zip(self.spatial, CONVS[self.dims][1]))


SETUPS = [
    Setup(d, batch, spatial, channels_last)
    for d in (1, 2, 3)
    for batch in (1, 2)
    for spatial in SPATIAL[d]
    for channels_last in ((False, True) if d > 1 else (False,))
]


@st.composite
def cases(draw: Any, where: Callable[[Setup], bool] = lambda setup: True) -> Case:
    """A conv whose setup satisfies ``where``, and a random consumer chain that eager runs."""
    setup = draw(st.sampled_from([s for s in SETUPS if where(s)]))
    d, batch, spatial, channels_last = setup.dims, setup.batch, setup.spatial, setup.channels_last
    grad = draw(st.booleans())
    case = Case(d, batch, spatial, channels_last, grad, "")
    with torch.no_grad():
        values = {"y": case.conv()(case.input())}
    lines: list[str] = []
    fresh = itertools.count(1)
    for _ in range(draw(st.integers(1, 4))):
        source = draw(st.sampled_from(sorted(values)))
        # gelu saves its input for backward: an in-place op on it later is an error AOTAutograd raises at compile
        op = draw(st.sampled_from([o for o in OPS if not (grad and o == "gelu")]))
        tensor = values[source]
        if op in IN_PLACE:
            line, target = IN_PLACE[op].format(source), None
        else:
            if tensor.dim() == 0 and op in (
                "view(B, -1)",
                "view(B, C, -1)",
                "reshape(B, -1)",
                "narrow",
                "select",
                "flatten(d)",
                "transpose",
                "permute",
            ):
                continue
            if tensor.dim() < 3 and op == "view(B, C, -1)":
                continue
            target = f"v{next(fresh)}"
            line = f"{target} = {EXPRESSIONS[op](draw, source, tensor)}"
        scope = {"torch": torch, "F": F, **values}
        try:
            with torch.no_grad():
                exec(line, scope)
        except RuntimeError:  # e.g. a view eager's strides do not allow: not a program eager runs
            continue
        lines.append(line)
        if target is not None:
            values[target] = scope[target]
    returned = draw(st.lists(st.sampled_from(sorted(values)), unique=True, max_size=3))
    if draw(st.booleans()) or not returned:
        returned.append("y.sum()")
    body = "\n".join(f"    {line}" for line in lines) or "    pass"
    source = f"def chain(y):\n{body}\n    return ({', '.join(returned)},)\n"
    return Case(d, batch, spatial, channels_last, grad, source)


# --- the entry points: each turns the model into something to call on x -----------------------------------------


def _backend(inner: str) -> Callable[[nn.Module, torch.Tensor], Callable[..., Any]]:
    return lambda model, x: torch.compile(model, backend=conv_rewrite.backend(inner=inner, policy="always"))


def _inductor_options(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    return torch.compile(model, options=conv_rewrite.inductor_options(policy="always"))


def _rewritten(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    conv_rewrite.rewrite(gm, policy="always")
    return gm


def _convert_then_compile(model: nn.Module, x: torch.Tensor) -> Callable[..., Any]:
    conv_rewrite.convert_(model, policy="always")
    return torch.compile(model, backend="aot_eager")


ENTRY_POINTS: dict[str, Callable[[nn.Module, torch.Tensor], Callable[..., Any]]] = {
    "backend-aot_eager": _backend("aot_eager"),
    "backend-inductor": _backend("inductor"),
    "inductor_options": _inductor_options,
    "rewrite-symbolic_trace": lambda m, x: _rewritten(shape_propagated(torch.fx.symbolic_trace(m), x)),
    "rewrite-make_fx": lambda m, x: _rewritten(make_fx(m)(x)),
    "rewrite-export": lambda m, x: _rewritten(torch.export.export(m, (x,)).module()),
    "convert_-aot_eager": _convert_then_compile,
}
REWRITES = set(ENTRY_POINTS) - {"convert_-aot_eager"}  # those that report the conv they see
SLOW = {"backend-inductor", "inductor_options"}  # Inductor compiles C++ for every example


# What each compiling entry point compiles with when nothing is rewritten. Where that compile itself returns other
# strides or aliasing than eager (AOTAutograd regenerates an output view of an intermediate with its own strides for
# size-1 dims), the rewrite is held to what the same compile gives without it: that difference is torch's, not ours.
PLAIN = {
    "backend-aot_eager": "aot_eager",
    "backend-inductor": "inductor",
    "inductor_options": "inductor",
    "convert_-aot_eager": "aot_eager",
}


def layout_differences(got: tuple[Any, ...], want: tuple[Any, ...]) -> dict[tuple[int, ...], str]:
    """Where ``got`` differs from ``want`` in strides (key (i,)) or in which outputs share storage (key (i, j))."""
    problems = {
        (i,): f"output {i}: strides {g.stride()} != {w.stride()}"
        for i, (g, w) in enumerate(zip(got, want))
        if g.stride() != w.stride()
    }
    for i, j in itertools.combinations(range(len(want)), 2):
        shares = [_same_storage(got[i], got[j]), _same_storage(want[i], want[j])]
        if shares[0] != shares[1]:
            problems[i, j] = f"outputs {i} and {j}: share storage {shares[0]}, in the reference {shares[1]}"
    return problems


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def check_chain(case: Case, entry: str) -> None:
    """The entry point's result has eager's values (fp64, within TOL) and dtypes, and eager's strides and aliasing
    (or, for a compile, those of the same compile without the rewrite)."""
    torch._dynamo.reset()
    x = case.input()
    # Inductor's caches skip the passes on a hit, and with them the report this test reads
    with torch.set_grad_enabled(case.grad), torch._inductor.config.patch(force_disable_caches=entry in SLOW):
        want = case.model()(x.clone())
        with conv_rewrite.collect_reports() as report:
            got = ENTRY_POINTS[entry](case.model(), x.clone())(x.clone())
    assert len(report) >= 1 or entry not in REWRITES, "the conv was not seen"
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"output {i}: {g.shape} {g.dtype} != {w.shape} {w.dtype}"
        assert not w.numel() or (g - w).abs().max().item() <= TOL, f"output {i}: values differ from eager's"
    problems = layout_differences(got, want)
    if problems and entry in PLAIN:  # excused where the same compile without the rewrite gives what we give
        torch._dynamo.reset()
        with torch.set_grad_enabled(case.grad):
            plain = torch.compile(case.model(), backend=PLAIN[entry])(x.clone())
        unlike_plain = layout_differences(got, plain)
        problems = {key: why for key, why in problems.items() if key in unlike_plain}
    assert not problems, "; ".join(problems.values())


COMMON = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
}


@pytest.mark.parametrize("entry", sorted(set(ENTRY_POINTS) - SLOW))
@settings(max_examples=20, phases=(Phase.explicit, Phase.generate, Phase.shrink), **COMMON)
@given(data=st.data())
def test_consumer_chain_keeps_values_strides_and_aliasing(entry: str, data: st.DataObject) -> None:
    check_chain(data.draw(cases(), label="case"), entry)


@pytest.mark.parametrize("entry", sorted(SLOW))
@settings(max_examples=3, phases=(Phase.explicit, Phase.generate, Phase.shrink), **COMMON)
@given(case=cases(lambda setup: setup.dims == 2))
def test_consumer_chain_keeps_values_strides_and_aliasing_under_inductor(entry: str, case: Case) -> None:
    check_chain(case, entry)
