"""Small models shared by the compile tests: patch convs mixed with convs that must stay."""

import torch
import torch.nn as nn


class MixedConvs(nn.Module):
    """A Wan-style patch embed with its usual consumer, beside a padded, a grouped and an overlapping conv."""

    def __init__(self, channels: int = 4, dim: int = 8):
        super().__init__()
        self.patch_embedding = nn.Conv3d(channels, dim, (1, 2, 2), stride=(1, 2, 2))
        self.proj = nn.Linear(dim, dim)
        self.padded = nn.Conv2d(dim, dim, 3, padding=1)
        self.grouped = nn.Conv2d(dim, dim, 2, stride=2, groups=2)
        self.overlapping = nn.Conv1d(dim, dim, 4, stride=2)
        self.tokens = nn.Conv1d(dim, dim, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.patch_embedding(x)
        tokens = self.proj(h.flatten(2).transpose(1, 2))
        frame = h[:, :, 0]
        seq = tokens.transpose(1, 2)
        return tokens, self.padded(frame), self.grouped(frame), self.overlapping(seq), self.tokens(seq)


PATCH_CONVS = {"patch_embedding", "tokens"}
KEPT_CONVS = {
    "padded": "stride (1, 1) != kernel (3, 3)",
    "grouped": "groups 2",
    "overlapping": "stride (2) != kernel (4)",
}


def mixed_inputs(frames: int = 3) -> tuple[torch.Tensor]:
    return (torch.randn(2, 4, frames, 10, 13),)
