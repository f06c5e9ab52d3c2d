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


# -- higher-order derivatives of a converted conv: as the conv's (gradient penalties, Hessian-vector products) --------

HIGHER_ORDER_CONVS = {
    "free + copy": (lambda: nn.Conv2d(8, 4, 2, stride=2), (2, 8, 4, 4)),
    "weight @ patches^T": (lambda: nn.Conv2d(3, 16, 2, stride=2), (2, 3, 8, 8)),
    "linear, L = 1": (lambda: nn.Conv1d(3, 8, 2, stride=2), (3, 3, 2)),
}


@pytest.mark.parametrize("case", sorted(HIGHER_ORDER_CONVS))
def test_converted_conv_has_the_convs_higher_order_derivatives(case):
    import copy

    from torch.func import functional_call, grad, hessian, jvp

    make, shape = HIGHER_ORDER_CONVS[case]
    torch.manual_seed(0)
    conv = make().double()
    converted = copy.deepcopy(conv)
    conv_rewrite.convert_(converted, policy="always")
    x = torch.randn(*shape, dtype=torch.float64)

    def derivatives(m: nn.Module) -> list[torch.Tensor]:
        params = dict(m.named_parameters())
        w_grad = torch.autograd.grad(m(x).sin().sum(), m.weight, create_graph=True)[0]
        xr = x.clone().requires_grad_()
        x_grad = torch.autograd.grad(m(xr).sin().sum(), xr, create_graph=True)[0]
        with torch.autograd.forward_ad.dual_level():
            dual = torch.autograd.forward_ad.make_dual(x, torch.ones_like(x))
            forward_tangent = torch.autograd.forward_ad.unpack_dual(m(dual)).tangent
        return [
            torch.autograd.grad(w_grad.square().sum(), m.weight)[0],  # double backward through the weight gradient
            torch.autograd.grad(x_grad.square().sum(), xr)[0],  # a gradient penalty on the input
            grad(lambda p: functional_call(m, p, (x,)).sin().sum())(params)["weight"],
            jvp(lambda w: functional_call(m, {**params, "weight": w}, (x,)), (m.weight,), (torch.ones_like(m.weight),))[
                1
            ],
            forward_tangent,
            hessian(lambda b: functional_call(m, {**params, "bias": b}, (x,)).sin().sum())(m.bias),
        ]

    for i, (got, want) in enumerate(zip(derivatives(converted), derivatives(conv))):
        assert (got - want).abs().max().item() <= 1e-10, i


def _rewritten_entries(conv: nn.Module) -> dict:
    """The ways a conv reaches training with the rewrite: a converted copy (eager, compiled) and the backend."""
    import copy

    converted = copy.deepcopy(conv)
    conv_rewrite.convert_(converted, policy="always")
    backend = conv_rewrite.backend(inner="aot_eager", policy="always")
    return {
        "convert_": (converted, lambda fn: fn),
        "convert_-aot_eager": (converted, lambda fn: torch.compile(fn, backend="aot_eager")),
        "convert_-inductor": (converted, lambda fn: torch.compile(fn, backend="inductor")),
        "backend": (copy.deepcopy(conv), lambda fn: torch.compile(fn, backend=backend)),
    }


@pytest.mark.parametrize("entry", ["convert_", "convert_-aot_eager", "convert_-inductor", "backend"])
def test_every_returned_alias_of_the_output_carries_its_gradient(entry, no_inductor_cache):
    """A graph returning the conv's output and a view of it: both are differentiable, and the view's share of the
    loss reaches the weight (AOTAutograd rebuilds a returned alias from its base: the base must not be detached)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, 2, stride=2).double()
    x = torch.randn(2, 3, 14, 11, dtype=torch.float64)
    module, wrap = _rewritten_entries(conv)[entry]
    torch._dynamo.reset()

    def loss(m, compile_fn):
        y, tokens = compile_fn(lambda t: (lambda y: (y, y.flatten(2)))(m(t)))(x)
        assert y.requires_grad and tokens.requires_grad
        return torch.autograd.grad(y.sum() + tokens.square().sum(), m.weight)[0]

    assert (loss(module, wrap) - loss(conv, lambda fn: fn)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("entry", ["convert_", "convert_-aot_eager", "backend"])
@pytest.mark.parametrize("out_channels", [24, 4], ids=["weight_major", "tokens_major"])
def test_training_under_autocast_has_the_convs_dtypes_and_gradients(entry, out_channels):
    """Under autocast the GEMMs run in bf16, the saved input and weight are fp32: the backward casts as the conv's."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, out_channels, 2, stride=2)
    x = torch.randn(2, 3, 14, 11, requires_grad=True)
    module, wrap = _rewritten_entries(conv)[entry]
    torch._dynamo.reset()

    def grads(m, compile_fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = compile_fn(m)(x)
        assert y.dtype == torch.bfloat16
        return torch.autograd.grad(y.float().square().sum(), [x, m.weight, m.bias])

    for got, want in zip(grads(module, wrap), grads(conv, lambda fn: fn)):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=0.5, rtol=2e-2)  # bf16 products, summed in other orders


@pytest.mark.parametrize(
    ("out_channels", "memory_format"),
    [(16, torch.contiguous_format), (8, torch.channels_last)],
    ids=["weight_major", "free_view"],
)
def test_eager_output_without_grad_is_no_view(out_channels, memory_format):
    """As the conv's: no view, so in-place ops after no_grad and detach_() work on it."""
    conv = nn.Conv2d(3, out_channels, 2, stride=2)
    converted = _rewritten_entries(conv)["convert_"][0]
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=memory_format)
    for m in (conv, converted):
        with torch.no_grad():
            y = m(x)
        assert not y._is_view()
        y.mul_(2)
        y.detach_()
        conv.requires_grad_(False)
        converted.requires_grad_(False)
        assert not m(x)._is_view()


@pytest.mark.parametrize("entry", ["convert_-aot_eager", "backend"])
def test_a_data_dependent_batch_compiles_and_trains(entry):
    """x[:n.item()]: the backward reads no size off its tensors (a data-dependent size there fails AOTAutograd's
    partitioner, torch 2.13)."""
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        _data_dependent_batch(entry)


def _data_dependent_batch(entry: str) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 2, stride=2).double()
    module, wrap = _rewritten_entries(conv)[entry]
    x, n = torch.randn(4, 3, 8, 8, dtype=torch.float64, requires_grad=True), torch.tensor(3)
    torch._dynamo.reset()

    def grads(m, compile_fn):
        def head(t, k):
            k = k.item()
            torch._check(k >= 1)
            torch._check(k <= t.shape[0])
            return m(t[:k])

        y = compile_fn(head)(x, n)
        return [y, *torch.autograd.grad(y.square().sum(), [x, m.weight, m.bias])]

    for got, want in zip(grads(module, wrap), grads(conv, lambda fn: fn)):
        assert (got - want).abs().max().item() <= 1e-10


@pytest.mark.parametrize("entry", ["convert_", "convert_-aot_eager", "backend"])
@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_have_the_convs_layout(entry, dims):
    """A channels-last input: the conv returns its input's and weight's gradients channels-last (autograd.grad hands
    them out as they are; only .grad accumulation would restride them)."""
    torch.manual_seed(0)
    conv = (nn.Conv2d(3, 8, 2, stride=2) if dims == 2 else nn.Conv3d(3, 8, 2, stride=2)).double()
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    x = torch.randn(2, 3, *[8] * dims, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    module, wrap = _rewritten_entries(conv)[entry]
    torch._dynamo.reset()
    got = torch.autograd.grad(wrap(module)(x).square().sum(), [x, module.weight])
    want = torch.autograd.grad(conv(x).square().sum(), [x, conv.weight])
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= 1e-10
        assert g.stride() == w.stride()


@pytest.mark.parametrize("entry", ["convert_-aot_eager", "convert_-inductor", "backend"])
@pytest.mark.parametrize("batch", [1, 2])
def test_a_returned_contiguous_output_is_no_view(entry, batch, no_inductor_cache):
    """As the conv's: a compiled graph's returned output (here with a token view of it) is a tensor of its own, so
    detach_() works on it. The weight-major forms end in a view of the GEMM's result; the Function returns it as an
    _unsafe_view, not a view."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 2, stride=2)
    x = torch.randn(batch, 3, 6, 6, requires_grad=True)
    module, wrap = _rewritten_entries(conv)[entry]
    torch._dynamo.reset()
    y, tokens = wrap(lambda t: (lambda y: (y, y.flatten(2).transpose(1, 2)))(module(t)))(x)
    want = conv(x)
    assert y._base is None and y.stride() == want.stride()
    assert (y - want).abs().max().item() <= 1e-5
    y.detach_()


def test_torch_func_gradients_have_the_convs_strides():
    """torch.func differentiates the ops themselves: a bias folded into the weight would make the weight's gradient
    a slice of the folded matrix. O > K and L a multiple of 8: the form that folds it."""
    import copy

    from torch.func import functional_call, grad

    torch.manual_seed(0)
    conv = nn.Conv1d(3, 8, 2, stride=2).double()
    converted = copy.deepcopy(conv)
    conv_rewrite.convert_(converted, policy="always")
    x = torch.randn(2, 3, 32, dtype=torch.float64)

    def grads(m: nn.Module) -> dict:
        return grad(lambda p: functional_call(m, p, (x,)).sin().sum())(dict(m.named_parameters()))

    got, want = grads(converted), grads(conv)
    for name in want:
        assert (got[name] - want[name]).abs().max().item() <= 1e-10
        assert got[name].stride() == want[name].stride(), name
