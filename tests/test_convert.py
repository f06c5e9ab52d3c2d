"""convert_ / restore_: in-place model conversion keeps the modules, state and hooks, and only the math changes."""

from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import conv_rewrite
import conv_rewrite.record
from conv_rewrite import Report, convert_, restore_, rewrite

CONV_TARGETS = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, torch.convolution}


class CountConvs(TorchDispatchMode):
    """Counts the ATen convolution ops (forward and backward) that actually run."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "convolution" in func.name():
            self.count += 1
        return func(*args, **(kwargs or {}))


def conv_count(fn, *args) -> int:
    with CountConvs() as counter:
        fn(*args)
    return counter.count


def profiled_conv_count(fn, *args) -> int:
    """Counts aten::convolution calls with the profiler, which also sees the ops that compiled code runs (Dynamo
    does not compile under a TorchDispatchMode)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    return sum(event.name == "aten::convolution" for event in prof.events())


def layout(t: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """(size, stride) of every dim of size > 1: a size-1 dim's stride addresses nothing, so ATen leaves it free."""
    return tuple((n, s) for n, s in zip(t.shape, t.stride()) if n > 1)


def graph_has_conv(gm: torch.fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        if node.op == "call_function" and (node.target in CONV_TARGETS or "convolution" in str(node.target)):
            return True
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.modules.conv._ConvNd):
            return True
    return False


class Capture:
    """A torch.compile backend that keeps every Dynamo graph it is given and runs it as is."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.norm(x))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(8, 6, (1, 2, 2), stride=(1, 2, 2), bias=False, padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PatchModel(nn.Module):
    """A Wan-like patch embedding (Conv3d k=s=(1,2,2)) feeding a block, and a patchify head in a submodule that gets
    the block's output as a channels-last input and pads (by 0) with padding_mode "replicate"."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv3d(4, 8, (1, 2, 2), stride=(1, 2, 2))
        self.register_buffer("scale", torch.tensor(0.5))
        self.block = Block(8)
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.patch(x)
        sizes = y.shape[2:]
        y = self.block(y.flatten(2).transpose(1, 2)) * self.scale
        return self.head(y.transpose(1, 2).unflatten(2, sizes))


@pytest.fixture
def model() -> PatchModel:
    torch.manual_seed(0)
    return PatchModel().eval()


@pytest.fixture
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 4, 3, 9, 9)  # odd H, W: the trailing row and column are never read


def test_identity_attributes_and_repr_are_kept(model):
    modules = dict(model.named_modules())
    params = {k: id(v) for k, v in model.named_parameters()}
    buffers = {k: id(v) for k, v in model.named_buffers()}
    dicts = {k: dict(vars(m)) for k, m in modules.items()}
    text = repr(model)
    report = convert_(model)
    assert [r.module for r in report.rewritten] == ["patch", "head.proj"]
    assert dict(model.named_modules()) == modules
    assert {k: id(v) for k, v in model.named_parameters()} == params
    assert {k: id(v) for k, v in model.named_buffers()} == buffers
    assert type(model.patch) is nn.Conv3d and isinstance(model.head.proj, nn.Conv3d)
    assert repr(model) == text
    for name, module in modules.items():  # the only change: one instance attribute on each converted conv
        added = {k: v for k, v in vars(module).items() if k not in dicts[name] or dicts[name][k] is not v}
        assert list(added) == (["_conv_forward"] if name in ("patch", "head.proj") else [])


class OwnForward(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def mixed_convs() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 2, stride=2),  # 0: patchify
        nn.Conv2d(8, 8, 3, padding=1),  # 1: overlapping windows
        nn.Conv2d(8, 8, 1, groups=4),  # 2: grouped
        OwnForward(8, 8, 1),  # 3: a subclass with its own forward
        nn.Conv2d(8, 8, 2, stride=2, padding=1, padding_mode="reflect"),  # 4: padded patchify
        nn.ConvTranspose2d(8, 8, 2, stride=2),  # 5: rewrite handles it, convert_ cannot reach its forward
        nn.Conv2d(8, 8, 2, stride=2, dilation=2),  # 6: dilated
        nn.Conv2d(8, 8, 1),  # 7: pointwise patchify
    )


def test_report_rows_equal_rewrite_rows():
    class Leaves(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, nn.modules.conv._ConvNd) or super().is_leaf_module(m, qualname)

    def fields(report, index):
        return {k: v for k, v in report[index].to_dict().items() if k not in ("node", "graph")}

    for policy in ("always", "never"):
        model = mixed_convs()
        expected = rewrite(torch.fx.GraphModule(model, Leaves().trace(model)), policy=policy)
        got = convert_(model, options={"policy": policy})
        assert conv_rewrite.record.last_report() is got
        assert [fields(got, i) for i in range(8) if i != 5] == [fields(expected, i) for i in range(8) if i != 5]
        assert [(r.node, r.module, r.graph, r.input_shape) for r in got] == [
            (str(i), str(i), "convert_", None) for i in range(8)
        ]
    reasons = [row.reason for row in got]
    assert reasons[:5] == [
        "policy 'never' (stride == kernel (2, 2))",
        "stride (1, 1) != kernel (3, 3)",
        "groups 4",
        "OwnForward overrides forward",
        "policy 'never' (stride == kernel (2, 2), padding (1, 1) reflect)",
    ]
    assert reasons[5] == expected[5].reason == "policy 'never' (transposed, stride == kernel (2, 2))"
    always = convert_(mixed_convs())
    assert (
        always[5].reason == "nn.ConvTranspose2d is not converted in place (its forward calls the conv); rewrite "
        "converts it"
    )


def test_only_qualifying_convs_stop_running_a_convolution():
    model = mixed_convs()
    x = torch.randn(2, 3, 16, 16)
    before = model(x)
    assert conv_count(model, x) == 8
    report = convert_(model, filter_fn=lambda m, fqn: fqn != "7")
    assert [r.module for r in report.rewritten] == ["0", "4"]
    assert report[7].reason == "excluded by filter_fn"
    assert conv_count(model, x) == 6
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


@st.composite
def conv_configs(draw):
    dims = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    sizes = [k * draw(st.integers(1, 3)) + draw(st.integers(0, k - 1)) for k in kernel]
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    padding = [draw(st.sampled_from([0, 0, 1, 2])) for _ in range(dims)]
    if padding_mode in ("reflect", "circular"):  # F.pad's limits for these modes, which the conv hits too
        padding = [min(p, s - 1) for p, s in zip(padding, sizes)]
    return dict(
        dims=dims,
        kernel=kernel,
        sizes=sizes,
        padding=padding,
        padding_mode=padding_mode,
        cin=draw(st.integers(1, 3)),
        cout=draw(st.integers(1, 4)),
        bias=draw(st.booleans()),
        batch=draw(st.sampled_from([None, 1, 3])),
        channels_last=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None, database=None)
@given(conv_configs())
@example(
    dict(
        dims=1,
        kernel=[1],
        sizes=[1],
        padding=[0],
        padding_mode="zeros",
        cin=1,
        cout=2,
        bias=False,
        batch=None,
        channels_last=False,
    )
)  # size-1 dims: ATen and the GEMM give them different strides
@example(
    dict(
        dims=2,
        kernel=[1, 1],
        sizes=[1, 2],
        padding=[0, 0],
        padding_mode="circular",
        cin=2,
        cout=2,
        bias=False,
        batch=1,
        channels_last=True,
    )
)  # F.pad(mode="circular") by 0 copies a channels-last input to a contiguous one
def test_matches_conv_fp64_values_grads_and_strides(cfg):
    torch.manual_seed(0)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[cfg["dims"] - 1]
    ref = cls(
        cfg["cin"],
        cfg["cout"],
        cfg["kernel"],
        stride=cfg["kernel"],
        padding=cfg["padding"],
        padding_mode=cfg["padding_mode"],
        bias=cfg["bias"],
    ).double()
    conv = copy.deepcopy(ref)
    assert len(convert_(conv).rewritten) == 1
    shape = [cfg["batch"] or 1, cfg["cin"], *cfg["sizes"]]
    x = torch.randn(shape, dtype=torch.float64)
    if cfg["channels_last"]:  # channels innermost in memory, for any rank
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    if cfg["batch"] is None:
        x = x[0]
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    expected = ref(xs[0])
    grad = torch.randn_like(expected)
    expected.backward(grad)
    with CountConvs() as counter:
        got = conv(xs[1])
        got.backward(grad)
    assert counter.count == 0
    assert got.shape == expected.shape
    assert layout(got) == layout(expected)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(xs[1].grad, xs[0].grad, atol=1e-10, rtol=0)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, atol=1e-10, rtol=0)
    if cfg["bias"]:
        torch.testing.assert_close(conv.bias.grad, ref.bias.grad, atol=1e-10, rtol=0)


def test_filter_fn_is_called_once_per_conv_with_module_and_fqn(model):
    seen = []
    report = convert_(model, filter_fn=lambda m, fqn: seen.append((type(m), fqn)) or fqn == "patch")
    assert seen == [(nn.Conv3d, "patch"), (nn.Conv3d, "head.proj")]
    assert [r.module for r in report.rewritten] == ["patch"]
    assert "_conv_forward" not in vars(model.head.proj)


def test_policy_never_reports_and_changes_nothing(model, x):
    report = convert_(model, policy="never")
    assert len(report) == 2 and not report.rewritten
    assert conv_count(model, x) == 2


def test_converted_model_runs_no_convolution_and_matches(model, x):
    expected = model(x)
    assert conv_count(model, x) == 2
    convert_(model)
    assert conv_count(model, x) == 0
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_a_conv_as_the_root_module_is_converted():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 4, stride=4)
    x = torch.randn(1, 3, 8, 8)
    expected = conv(x)
    report = convert_(conv)
    assert [(r.module, r.decision) for r in report] == [("", "rewritten")]
    assert conv_count(conv, x) == 0
    torch.testing.assert_close(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_hooks_registered_before_conversion_still_fire(model, x):
    calls = []
    model.patch.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    model.patch.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    expected = model(x)
    convert_(model)
    got = model(x)
    assert calls == [torch.Size([2, 8, 3, 4, 4])] * 2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()
    capture = Capture()
    torch.compile(model, backend=capture, fullgraph=True)(x)
    assert len(capture.graphs) == 1 and not graph_has_conv(capture.graphs[0])
    assert sum(n.target in CONVERTED for n in capture.graphs[0].graph.nodes) == 2
    torch._dynamo.reset()
    [aten] = aten_forward_graphs(model, x)
    assert not graph_has_conv(aten) and sum(n.target in ATEN_GEMMS for n in aten.graph.nodes) >= 3
    assert conv_count(model, x) == 0


def test_an_instance_forward_wrapper_installed_before_conversion_keeps_working(model, x):
    """accelerate's add_hook_to_module (and diffusers' HookRegistry) replace ``module.forward`` on the instance."""
    calls = []

    def new_forward(module, *args):
        calls.append(module)
        return module._old_forward(*args)

    patch = model.patch
    patch._old_forward = patch.forward
    patch.forward = functools.update_wrapper(functools.partial(new_forward, patch), patch._old_forward)
    expected = model(x)
    convert_(model)
    assert conv_count(model, x) == 0
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    assert calls == [patch] * 3


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.* is deprecated:FutureWarning")
@pytest.mark.parametrize("weight_norm", [nn.utils.weight_norm, nn.utils.parametrizations.weight_norm])
def test_a_weight_recomputed_by_a_hook_or_a_parametrization_is_used(weight_norm):
    """The legacy weight_norm sets .weight in a forward-pre hook; a parametrization computes it on each read."""
    torch.manual_seed(0)
    conv = weight_norm(nn.Conv2d(3, 4, 2, stride=2))
    x = torch.randn(2, 3, 8, 8)
    before = conv(x)
    assert len(convert_(conv).rewritten) == 1
    with torch.no_grad():
        next(p for name, p in conv.named_parameters() if name.endswith(("weight_g", "original0"))).mul_(3)
    with CountConvs() as counter:
        got = conv(x)
    assert counter.count == 0
    expected = F.conv2d(x, conv.weight, conv.bias, stride=2)
    assert not torch.allclose(got, before, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_conv_forward_replaced_on_the_instance_is_left_alone():
    conv = nn.Conv2d(3, 4, 2, stride=2)
    own = functools.partial(F.conv2d, stride=2)
    conv._conv_forward = own
    report = convert_(conv)
    assert [(r.decision, r.reason) for r in report] == [("skipped", "_conv_forward is replaced on the instance")]
    assert restore_(conv) == [] and conv._conv_forward is own


def test_state_dict_round_trips_both_ways(model, x):
    torch.manual_seed(5)
    other = PatchModel().eval()
    expected = other(x)
    before = other.state_dict()
    convert_(model)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    model.load_state_dict(before, strict=True)  # a checkpoint saved before conversion loads after it
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    fresh = PatchModel().eval()
    fresh.load_state_dict(model.state_dict(), strict=True)  # and the other way round
    assert conv_count(fresh, x) == 2
    torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)


def test_deepcopy_keeps_the_conversion_on_the_copy_only(model, x):
    convert_(model)
    expected = model(x)
    clone = copy.deepcopy(model)
    assert clone.patch.weight is not model.patch.weight
    assert conv_count(clone, x) == 0
    torch.testing.assert_close(clone(x), expected, atol=0, rtol=0)
    assert restore_(clone) == ["patch", "head.proj"]
    assert conv_count(clone, x) == 2 and conv_count(model, x) == 0


def test_torch_save_and_load_of_the_whole_model(model, x):
    convert_(model)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert conv_count(loaded, x) == 0
    torch.testing.assert_close(loaded(x), expected, atol=0, rtol=0)
    assert restore_(loaded) == ["patch", "head.proj"]


def test_to_float64_and_half(model, x):
    reference = copy.deepcopy(model).to(torch.float64)
    convert_(model)
    model.to(torch.float64)
    assert model.patch.weight.dtype == torch.float64
    assert conv_count(model, x.double()) == 0
    torch.testing.assert_close(model(x.double()), reference(x.double()), atol=1e-10, rtol=0)
    model.half()
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    conv = model.patch
    with CountConvs() as counter:
        got = conv(x.half())
    assert counter.count == 0 and got.dtype == torch.float16
    expected = F.conv3d(x.half().double(), conv.weight.double(), conv.bias.double(), stride=(1, 2, 2))
    torch.testing.assert_close(got.double(), expected, atol=2e-2, rtol=2e-2)


def test_restore_undoes_the_conversion_exactly(model, x):
    expected = model(x)
    dicts = {name: dict(vars(m)) for name, m in model.named_modules()}
    convert_(model)
    assert restore_(model) == ["patch", "head.proj"]
    assert {name: dict(vars(m)) for name, m in model.named_modules()} == dicts
    assert conv_count(model, x) == 2
    torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
    assert restore_(model) == []


def test_converting_twice_is_the_same_as_once(model, x):
    convert_(model)
    assert len(convert_(model).rewritten) == 2
    assert restore_(model) == ["patch", "head.proj"]
    assert conv_count(model, x) == 2


GEMMS = {F.linear, torch.matmul, torch.baddbmm, torch.addmm, torch.mm, torch.bmm}
ATEN_GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
CONVERTED = {torch.ops.conv_rewrite.converted_conv, torch.ops.conv_rewrite.converted_conv.default}


def aten_forward_graphs(model: nn.Module, x: torch.Tensor) -> list[torch.fx.GraphModule]:
    """The ATen forward graphs AOTAutograd makes of ``model`` (Dynamo's graph decomposed, as Inductor receives it)."""
    from torch._dynamo.backends.common import aot_autograd

    graphs: list[torch.fx.GraphModule] = []
    torch.compile(model, backend=aot_autograd(fw_compiler=lambda gm, _: graphs.append(gm) or gm), fullgraph=True)(x)
    return graphs


def test_dynamo_traces_a_converted_model_into_one_graph_without_a_conv(model, x):
    reference = copy.deepcopy(model)
    expected = model(x)
    capture = Capture()
    torch.compile(model, backend=capture, fullgraph=True)(x)
    assert len(capture.graphs) == 1 and graph_has_conv(capture.graphs[0])  # the check sees a conv when one is there
    torch._dynamo.reset()
    convert_(model)
    capture = Capture()
    with torch.no_grad():  # under autograd the GEMMs sit in the subgraphs of an autograd.Function (checked below)
        got = torch.compile(model, backend=capture, fullgraph=True)(x)  # fullgraph: a graph break raises
    nodes = list(capture.graphs[0].graph.nodes)
    assert len(capture.graphs) == 1 and not graph_has_conv(capture.graphs[0])
    # Dynamo records each converted conv as one op (it does not trace the Python inside, whose sizes it would see
    # as plain ints); AOTAutograd decomposes it into the patchify GEMM
    assert sum(n.target in CONVERTED for n in nodes) == 2  # patch, head.proj
    torch._dynamo.reset()
    with torch.no_grad():
        [aten] = aten_forward_graphs(model, x)
    assert not graph_has_conv(aten) and not any(n.target in CONVERTED for n in aten.graph.nodes)
    assert sum(n.target in ATEN_GEMMS for n in aten.graph.nodes) == 3  # patch, block.proj, head.proj
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert layout(got) == layout(expected)
    x_cl = x.to(memory_format=torch.channels_last_3d)  # while tracing, the conv's layout comes from a rule: check it
    got = torch.compile(model.patch, backend="eager", fullgraph=True)(x_cl)
    assert layout(got) == layout(reference.patch(x_cl)) and got.is_contiguous(memory_format=torch.channels_last_3d)


def test_converting_and_restoring_an_already_compiled_model_recompiles(model, x):
    """Dynamo guards on the module's attributes, so the compiled model follows convert_ and restore_."""
    expected = model(x)
    compiled = torch.compile(model, backend="aot_eager")
    compiled(x)  # compiles: Dynamo does not compile under the profiler
    assert profiled_conv_count(compiled, x) == 2
    report = convert_(compiled)
    assert [r.module for r in report.rewritten] == ["_orig_mod.patch", "_orig_mod.head.proj"]
    torch.testing.assert_close(compiled(x), expected, atol=1e-5, rtol=1e-5)
    assert profiled_conv_count(compiled, x) == 0
    assert restore_(compiled) == ["_orig_mod.patch", "_orig_mod.head.proj"]
    compiled(x)
    assert profiled_conv_count(compiled, x) == 2


class QwenVisionPatch(nn.Module):
    """Qwen2-VL's PatchEmbed in small: flat patches in, a Conv3d whose kernel covers the whole patch, ``view`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, 32, (2, 4, 4), stride=(2, 4, 4), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.view(-1, 3, 2, 4, 4)).view(-1, 32)


def test_inductor_compiles_a_converted_model_to_one_gemm():
    """Inductor on CPU builds C++ for any copy kernel: the first costs 30-45 s on a cold cache here. Qwen-VL's patch
    embedding needs none once converted (the patches are a view of the input), so this test stays fast."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = QwenVisionPatch()
    x = torch.randn(10, 3 * 2 * 4 * 4)
    with torch.no_grad():
        expected = model(x)
        _, code = run_and_get_code(torch.compile(copy.deepcopy(model)), x)
        assert "extern_kernels.convolution" in code[0]  # the check sees a conv when one is compiled
        convert_(model)
        compiled = torch.compile(model)
        got, code = run_and_get_code(compiled, x)
        assert "convolution" not in code[0] and code[0].count("extern_kernels.mm(") == 1
        assert profiled_conv_count(compiled, x) == 0
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_regional_compile_of_a_submodule(model, x):
    torch._dynamo.reset()
    reference = copy.deepcopy(model)
    reference.head.compile(backend="aot_eager", fullgraph=True)
    expected = reference(x)  # compiles: Dynamo does not compile under the profiler
    assert profiled_conv_count(reference, x) == 2
    convert_(model)
    capture = Capture()
    model.head.compile(backend=capture, fullgraph=True)  # only head (holding the converted head.proj) compiles
    got = model(x)
    assert len(capture.graphs) == 1 and not graph_has_conv(capture.graphs[0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert layout(got) == layout(expected)
    torch._dynamo.reset()
    model.head.compile(backend="aot_eager", fullgraph=True)
    model(x)
    assert profiled_conv_count(model, x) == 0


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_torch_export_of_a_converted_model(model, x, strict):
    reference = copy.deepcopy(model)
    expected = reference(x)
    convert_(model)
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},), strict=strict)
    calls = [n for n in ep.graph.nodes if n.op == "call_function"]
    assert not any("convolution" in str(n.target) for n in calls)
    assert all(n.users for n in calls), "the program holds dead nodes"
    exported = ep.module()
    got = exported(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the program is differentiable op by op: its parameters get the conv's gradients
    got.square().sum().backward()
    expected.square().sum().backward()
    grads = {name: p.grad for name, p in exported.named_parameters()}
    for name, param in reference.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=1e-4, rtol=1e-4, msg=name)
    x3 = torch.randn(3, *x.shape[1:])
    torch.testing.assert_close(exported(x3), reference(x3), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("strict", "dynamic"), [(False, False), (False, True), (True, False)], ids=["static", "dynamic_batch", "strict"]
)
def test_exported_converted_conv_returns_the_convs_strides(strict, dynamic):
    """ATen's CPU conv returns a channels_last_3d float64 input's result contiguous (its slow 3-d path): the exported
    program must too, with a static or a symbolic batch (ATen asked on export's fake tensors), and where Dynamo traced
    the conversion (strict, static sizes: ATen asked at trace time). Strict with symbolic sizes follows the rule of
    cuDNN and oneDNN (``conv_returns_channels_last``), which this layout does not obey."""
    conv = nn.Conv3d(8, 4, (1, 2, 2), stride=(1, 2, 2)).double()
    x = torch.randn(2, 8, 4, 16, 16, dtype=torch.float64).to(memory_format=torch.channels_last_3d)
    expected = conv(x)
    convert_(conv, policy="always")
    shapes = ({0: torch.export.Dim("batch", min=2, max=8)},) if dynamic else None
    got = torch.export.export(conv, (x,), dynamic_shapes=shapes, strict=strict).module()(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.stride() == expected.stride()


def test_bad_input():
    with pytest.raises(TypeError, match=r"convert_\(\) expects a torch.nn.Module, got builtins.dict"):
        convert_({"weight": torch.ones(1)})
    with pytest.raises(TypeError, match=r"restore_\(\) expects a torch.nn.Module, got builtins.int"):
        restore_(3)
    with pytest.raises(TypeError, match="filter_fn must be a callable.*got builtins.str"):
        convert_(nn.Conv2d(1, 1, 1), filter_fn="patch")
    with pytest.raises(ValueError, match="unknown conv_rewrite option"):
        convert_(nn.Conv2d(1, 1, 1), polcy="never")


def test_a_model_without_a_conv_is_left_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    dicts = [dict(vars(m)) for m in model.modules()]
    report = convert_(model)
    assert isinstance(report, Report) and len(report) == 0 and str(report) == "no convolutions found"
    assert [dict(vars(m)) for m in model.modules()] == dicts
    assert restore_(model) == []


WAN_CONFIG = dict(
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=16,
    ffn_dim=32,
    patch_size=(1, 2, 2),
    rope_max_seq_len=32,
)


def test_wan_transformer_converted_with_regionally_compiled_blocks():
    """The backend is aot_eager: AOTAutograd traces the blocks as Inductor would, without Inductor's C++ build (about
    20 s on CPU here). The patch embedding is outside the repeated blocks: it runs eagerly whatever the backend."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install diffusers==0.42.1)")
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**WAN_CONFIG).eval()
    args = (torch.randn(1, 4, 3, 8, 8), torch.tensor([500]), torch.randn(1, 5, 16))
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(*args, return_dict=False)[0]
        report = convert_(model)
        model.compile_repeated_blocks(backend="aot_eager", fullgraph=True)
        got = model(*args, return_dict=False)[0]
        assert profiled_conv_count(model, *args) == 0
        assert restore_(model) == ["patch_embedding"]
        assert profiled_conv_count(model, *args) == 1
    assert [r.module for r in report.rewritten] == ["patch_embedding"] and not report.skipped
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_converted_model_under_dynamic_shapes_is_one_graph_without_breaks(channels_last):
    """Dynamo sees sizes as plain ints in traced Python: the converted conv is one op it records without tracing."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, 2, stride=2).double()
    converted = copy.deepcopy(conv)
    convert_(converted, policy="always")
    compiled = torch.compile(converted, dynamic=True, fullgraph=True, backend="aot_eager")
    torch._dynamo.utils.counters.clear()
    for size in [(14, 11), (15, 12), (9, 8), (6, 7)]:
        x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
        if channels_last:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        got, want = compiled(x), conv(x)
        assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-10
        assert got.stride() == want.stride()
        grads = torch.autograd.grad(got.sum(), [x, converted.weight, converted.bias])
        want_grads = torch.autograd.grad(want.sum(), [x, conv.weight, conv.bias])
        assert all((g - w).abs().max().item() <= 1e-10 for g, w in zip(grads, want_grads))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]


@pytest.mark.parametrize("padding", [0, 1], ids=["unpadded", "padded"])
def test_exported_conv1d_of_dynamic_length_runs_at_every_length(padding):
    """A symbolic length: the program must not guard on its remainder modulo the kernel (the plain conv's does not)."""
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 8, 3, stride=3, padding=padding, padding_mode="reflect" if padding else "zeros")
    reference = copy.deepcopy(conv)
    convert_(conv, policy="always")
    program = torch.export.export(conv, (torch.randn(2, 3, 10),), dynamic_shapes=({2: torch.export.Dim.AUTO},))
    for length in (9, 10, 11, 12, 30):
        x = torch.randn(2, 3, length)
        torch.testing.assert_close(program.module()(x), reference(x), atol=1e-5, rtol=1e-5)


def test_vmap_over_a_converted_module_calls_it_once(monkeypatch):
    """torch.func.vmap runs the plain ops once over the whole batch (the op has no batching rule: vmap would run it
    once per sample)."""
    import conv_rewrite.convert

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 2, stride=2)
    reference = copy.deepcopy(conv)
    convert_(conv, policy="always")
    x = torch.randn(16, 2, 3, 8, 8)
    calls = []
    kernel = conv_rewrite.convert._converted_conv_kernel
    monkeypatch.setattr(conv_rewrite.convert, "_converted_conv_kernel", lambda *a: calls.append(1) or kernel(*a))
    got = torch.func.vmap(conv)(x)
    assert len(calls) == 1
    torch.testing.assert_close(got, torch.func.vmap(reference)(x), atol=1e-5, rtol=1e-5)
