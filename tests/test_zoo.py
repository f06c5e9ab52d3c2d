"""The rewrite on real model classes from diffusers, transformers and MONAI, unmodified, with random weights.

Each model (bench/zoo_models.py) is compiled under the backend form and under the Inductor-pass form: the report
must name its stride == kernel convs and transposed convs as rewritten and every other conv as skipped with a
reason, and the output must match the unmodified eager model. Needs the ``zoo`` extra; each model is skipped when
its library is missing.

Numerics use ``aot_eager`` behind the rewrite; the real Inductor (minutes of C++ compilation per model on 2 cores)
runs on two small models. Tolerance, everywhere: both sides are fp32; the GEMM sums the K = C * prod(kernel)
products of a patch in another order than the CPU conv kernel, so each embedding differs by a few ulp (about 1e-6
relative for K <= 4096), and one or two random-init layers (attention, norms, GELU) amplify that at most tenfold.
rtol 1e-4 / atol 1e-5 leaves that margin; a wrong patch order, layout or crop changes outputs by O(1).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.backends.debugging import boxed_nop
from torch._inductor.compile_fx import run_pre_grad_passes

import conv_rewrite
from bench.zoo_models import FACTORIES, REQUIRES, ZooModel

RTOL, ATOL = 1e-4, 1e-5
aten = torch.ops.aten


def _build(name: str) -> ZooModel:
    for package in REQUIRES[name]:
        pytest.importorskip(package, reason=f"{name} needs {package}: pip install '.[zoo]'")
    return FACTORIES[name]()


def _conv_paths(zoo: ZooModel) -> set[str]:
    return {name for name, m in zoo.model.named_modules() if isinstance(m, torch.nn.modules.conv._ConvNd)}


def _assert_report(zoo: ZooModel, report: conv_rewrite.Report) -> None:
    """The stride == kernel convs are rewritten, every other conv is skipped with a reason, each named by its path."""
    expected = set(zoo.rewritten_convs)
    others = _conv_paths(zoo) - set(zoo.rewritten_convs)
    assert {row.module for row in report.rewritten} == expected, str(report)
    assert {row.module for row in report.skipped} == others, str(report)
    assert all(row.reason for row in report.skipped), str(report)


def _no_grad_run(zoo: ZooModel, model: Callable[..., Any]) -> torch.Tensor:
    with torch.no_grad():
        return zoo.run(model)


def _inductor_pre_grad_then_aot_eager(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """Inductor's own pre-grad stage, where ``inductor_options()`` hooks the rewrite in, then aot_eager in place of
    Inductor's code generation: the Inductor-pass form's rewrite on every model without its C++ compile."""
    with torch._inductor.config.patch(conv_rewrite.inductor_options()):
        gm = run_pre_grad_passes(gm, example_inputs)
    return aot_autograd(fw_compiler=boxed_nop)(gm, example_inputs)


@pytest.mark.parametrize("name", FACTORIES)
def test_backend_rewrites_stride_eq_kernel_convs_and_matches_eager(name):
    zoo = _build(name)
    expected = _no_grad_run(zoo, zoo.model)
    backend = conv_rewrite.backend(inner="aot_eager")
    out = _no_grad_run(zoo, torch.compile(zoo.model, backend=backend))
    _assert_report(zoo, backend.report)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", FACTORIES)
def test_inductor_pre_grad_pass_rewrites_stride_eq_kernel_convs_and_matches_eager(name):
    zoo = _build(name)
    expected = _no_grad_run(zoo, zoo.model)
    with conv_rewrite.collect_reports() as report:
        out = _no_grad_run(zoo, torch.compile(zoo.model, backend=_inductor_pre_grad_then_aot_eager))
    _assert_report(zoo, report)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


REAL_INDUCTOR = {
    "backend='conv_rewrite'": lambda m: torch.compile(m, backend="conv_rewrite"),
    "options=inductor_options()": lambda m: torch.compile(m, options=conv_rewrite.inductor_options()),
}


@pytest.mark.parametrize("form", REAL_INDUCTOR)
@pytest.mark.parametrize("name", ["clip_vision", "videomae"])
def test_real_inductor_rewrites_stride_eq_kernel_convs_and_matches_eager(name, form, no_inductor_cache):
    zoo = _build(name)
    expected = _no_grad_run(zoo, zoo.model)
    with conv_rewrite.collect_reports() as report:
        out = _no_grad_run(zoo, REAL_INDUCTOR[form](zoo.model))
    pre_grad = conv_rewrite.Report([row for row in report if "post-grad" not in (row.graph or "")])
    _assert_report(zoo, pre_grad)
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient; zeros where none was set (AOTAutograd returns zeros for parameters of a graph
    output the loss does not use, such as SigLIP's pooling head, where eager autograd leaves None)."""
    return {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["wan_t2v", "siglip_vision"])
def test_training_step_grads_match_eager_and_no_conv_is_left(name):
    """One fwd + bwd through the rewritten model: loss and every parameter's gradient equal the eager model's, and
    neither the forward nor the backward graph holds a convolution (both models have only their patch conv)."""
    zoo = _build(name)
    reference = copy.deepcopy(zoo.model).train()
    zoo.model.train()
    graphs: list[torch.fx.GraphModule] = []

    def keep(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(gm)
        return boxed_nop(gm, example_inputs)

    backend = conv_rewrite.backend(inner=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    compiled = torch.compile(zoo.model, backend=backend)
    weights = torch.randn_like(zoo.run(reference))  # a fixed random projection: every output element gets a gradient
    expected_loss = (zoo.run(reference) * weights).sum()
    expected_loss.backward()
    loss = (zoo.run(compiled) * weights).sum()
    loss.backward()

    torch.testing.assert_close(loss, expected_loss, rtol=RTOL, atol=ATOL)
    grads, expected_grads = _grads(zoo.model), _grads(reference)
    assert grads.keys() == expected_grads.keys()
    assert any(g.any() for g in grads.values())
    for n in grads:
        torch.testing.assert_close(grads[n], expected_grads[n], rtol=RTOL, atol=ATOL, msg=lambda m, n=n: f"{n}: {m}")
    conv_ops = {aten.convolution.default, aten.convolution_backward.default}
    assert len(graphs) >= 2  # a forward and a backward
    assert not [n for g in graphs for n in g.graph.nodes if n.target in conv_ops]
