"""Dynamic shapes: one graph for all frame counts when the temporal kernel is 1, at most one more when it is 2."""

import pytest
import torch
import torch.nn as nn

import conv_rewrite


class CountingBackend:
    """Counts real compiles: the rewrite backend in front of eager, called once per graph Dynamo builds."""

    def __init__(self):
        self.inner = conv_rewrite.backend(inner="eager")
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return self.inner(gm, example_inputs)


def _run_frames(kernel, frames, mark_dynamic):
    torch.manual_seed(0)
    conv = nn.Conv3d(4, 6, kernel, stride=kernel).double()
    model = nn.Sequential(conv, nn.Flatten(2))
    counter = CountingBackend()
    compiled = torch.compile(model, backend=counter, dynamic=None if mark_dynamic else True)
    for t in frames:
        x = torch.randn(1, 4, t, 6, 7, dtype=torch.float64)  # batch 1: no duck-sized batch == frames guard
        if mark_dynamic:
            torch._dynamo.mark_dynamic(x, 2)
        torch.testing.assert_close(compiled(x), model(x), atol=1e-10, rtol=0)
    assert all(row.rewritten for row in counter.inner.report)
    return counter.compiles


@pytest.mark.parametrize("mark_dynamic", [False, True], ids=["dynamic=True", "mark_dynamic"])
def test_temporal_kernel_1_compiles_once_for_frames_2_to_17(mark_dynamic):
    assert _run_frames((1, 2, 2), range(2, 18), mark_dynamic) == 1


@pytest.mark.parametrize("mark_dynamic", [False, True], ids=["dynamic=True", "mark_dynamic"])
def test_temporal_kernel_2_with_odd_counts_adds_at_most_one_graph(mark_dynamic):
    assert _run_frames((2, 2, 2), range(2, 18), mark_dynamic) <= 2
