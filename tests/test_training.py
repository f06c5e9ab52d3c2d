"""Training through the entry points that rewrite before autograd: GEMMs in the backward, grads equal eager."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.custom_graph_pass import CustomGraphPass

import conv_rewrite

aten = torch.ops.aten
CONV_OPS = {aten.convolution.default, aten.convolution_backward.default}


class PatchEmbedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv3d(3, 16, (2, 4, 4), stride=(2, 4, 4))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.norm(self.patch(x).flatten(2).transpose(1, 2)))


class RecordTargets(CustomGraphPass):
    """A post-grad pass that only records which ops each compiled graph (forward and backward) holds."""

    def __init__(self):
        self.graphs = []

    def __call__(self, graph):
        self.graphs.append({n.target for n in graph.nodes if n.op == "call_function"})

    def uuid(self):
        return "record-targets"


def _grads(model, x, compiled):
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    compiled(x).square().mean().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


def _check_grads(compiled_fn):
    torch.manual_seed(0)
    model = PatchEmbedModel()
    x = torch.randn(2, 3, 5, 18, 17)
    ref = _grads(model, x, model)
    got = _grads(model, x, compiled_fn(model))
    for g, r in zip(got, ref):
        # fp32 CPU: same sums in another order; the loss is O(1), so 1e-5 is ~100 ulps of headroom.
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_backend_backward_has_no_convolution_backward():
    graphs = []

    def capture(gm, example_inputs):
        graphs.append({n.target for n in gm.graph.nodes})
        return gm

    _check_grads(
        lambda m: torch.compile(
            m, backend=conv_rewrite.backend(inner=aot_autograd(fw_compiler=capture, bw_compiler=capture))
        )
    )
    assert len(graphs) == 2
    assert all(not (targets & CONV_OPS) for targets in graphs)
    assert aten.mm.default in graphs[1]


@pytest.mark.parametrize("form", ["backend", "inductor_options"])
def test_inductor_forms_backward_has_no_convolution_backward(form, no_inductor_cache):
    recorder = RecordTargets()
    options = {"post_grad_custom_post_pass": recorder}
    if form == "backend":
        _check_grads(lambda m: torch.compile(m, backend="conv_rewrite", options=options))
    else:
        _check_grads(lambda m: torch.compile(m, options={**conv_rewrite.inductor_options(), **options}))
    assert len(recorder.graphs) == 2, "forward and backward were both compiled"
    assert all(not (targets & CONV_OPS) for targets in recorder.graphs)


def test_without_rewrite_the_backward_holds_convolution_backward(no_inductor_cache):
    recorder = RecordTargets()
    _check_grads(lambda m: torch.compile(m, options={"post_grad_custom_post_pass": recorder}))
    assert any(aten.convolution_backward.default in targets for targets in recorder.graphs)
