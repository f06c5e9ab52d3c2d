"""The report names a conv by its module path in the compiled model, however Dynamo reached the module."""

import torch
import torch.nn as nn

import conv_rewrite


class _GetattrOverride(nn.Module):
    """A module class with its own ``__getattr__`` (as diffusers' ModelMixin has): Dynamo then records the child as
    ``L['self'].__dict__['_modules']['patch']`` in nn_module_stack."""

    def __getattr__(self, name: str):
        return super().__getattr__(name)


class _Embed(_GetattrOverride):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch(x).flatten(2).transpose(1, 2)


class _Outer(_GetattrOverride):
    def __init__(self):
        super().__init__()
        self.embed = _Embed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def test_module_path_of_a_child_of_a_module_with_its_own_getattr():
    backend = conv_rewrite.backend(inner="eager")
    torch.compile(_Outer(), backend=backend)(torch.randn(1, 3, 8, 8))
    assert [row.module for row in backend.report] == ["embed.patch"]
