"""Padded patchify convs: pad (any padding_mode) then the patchify GEMM, exact in fp64, with equal grads."""

import pytest
import torch
import torch.fx
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.shape_prop import ShapeProp

import conv_rewrite
from conv_rewrite.normalize import conv_call

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _convs(gm):
    return [n for n in gm.graph.nodes if conv_call(n, gm) is not None]


def _input(dims, channels=3):
    return torch.randn(2, channels, *(9, 10, 11)[:dims], dtype=torch.float64)


def _check(model, x, gm, reason_part):
    report = conv_rewrite.rewrite(gm, policy="always")
    assert [r.decision for r in report.rows] == ["rewritten"], str(report)
    assert reason_part in report.rows[0].reason
    assert not _convs(gm)
    xr, xg = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref, out = model(xr), gm(xg)
    assert (out - ref).abs().max().item() <= 1e-10
    ref.square().sum().backward()
    out.square().sum().backward()
    assert (xg.grad - xr.grad).abs().max().item() <= 1e-10


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_padding_mode_module_is_exact(dims, mode):
    model = nn.Sequential(CONV[dims](3, 5, 4, stride=4, padding=2, padding_mode=mode)).double()
    x = _input(dims)
    gm = torch.fx.symbolic_trace(model)
    ShapeProp(gm).propagate(x)
    suffix = "" if mode == "zeros" else f" {mode}"
    _check(model, x, gm, f"padding {(2,) * dims}".replace(",)", ")") + suffix)


@pytest.mark.parametrize("dims", [2, 3])
def test_vitpose_style_padding_every_aten_form(dims):
    model = CONV[dims](3, 8, 4, stride=4, padding=1).double()
    x = _input(dims)
    for gm in (make_fx(model)(x), torch.export.export(model, (x,)).module()):
        _check(model, x, gm, "padding (1, 1")


def test_same_with_kernel_one_and_valid_are_padding_zero():
    for padding in ("same", "valid"):
        model = nn.Sequential(nn.Conv2d(3, 5, 1, padding=padding)).double()
        x = _input(2)
        gm = torch.fx.symbolic_trace(model)
        ShapeProp(gm).propagate(x)
        _check(model, x, gm, "stride == kernel (1, 1)")
    kept = torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 5, 3, padding="same")))
    assert [r.reason for r in conv_rewrite.rewrite(kept, policy="always").skipped] == ["padding 'same'"]


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("output_padding", [0, 1])
def test_transposed_padding_crops_exactly(dims, output_padding):
    model = TRANSPOSED[dims](3, 5, 3, stride=3, padding=1, output_padding=output_padding).double()
    x = torch.randn(2, 3, *(2, 3, 4)[:dims], dtype=torch.float64)
    for gm in (make_fx(model)(x), torch.export.export(model, (x,)).module()):
        _check(model, x, gm, "padding")
        assert gm(x).is_contiguous()
