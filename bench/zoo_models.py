"""Real model classes that carry patchify convs, built from configs with random weights (no download).

One factory per model: config -> model + example inputs + which conv modules must be rewritten and which must stay.
``size="tiny"`` keeps the real patch layer (channels, kernel) with 1-2 small layers, for CPU tests; ``size="real"``
uses the real hidden sizes and a real input size with 1-2 layers, for GPU measurements. The tests and the GPU
benchmark share these factories, so both run the same models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

SIZES = ("tiny", "real")


@dataclass
class ZooModel:
    """A model, its example inputs, and what the rewrite must do to its convs.

    ``rewritten_convs``: module paths (as ``named_modules`` names them) of the convs and transposed convs with
    stride == kernel, which the rewrite must rewrite; every other conv module must be left alone.
    ``output`` picks the tensor to compare out of whatever the model returns.
    """

    name: str
    model: nn.Module
    inputs: dict[str, Any]
    rewritten_convs: tuple[str, ...]
    output: Callable[[Any], torch.Tensor] = field(default=lambda out: out[0])

    def run(self, model: Callable[..., Any] | None = None) -> torch.Tensor:
        """The output tensor of ``model`` (default: the eager model) on the example inputs."""
        return self.output((self.model if model is None else model)(**self.inputs))


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")


def _randn(*shape: int, dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype, device=device)


def _finish(zoo: ZooModel, dtype: torch.dtype, device: str | torch.device) -> ZooModel:
    """Move to ``device`` and ``dtype`` as ``from_pretrained(torch_dtype=...)`` would: diffusers models name modules
    that stay in float32 (``_keep_in_fp32_modules``: Wan's time embedder, norms and RoPE)."""
    zoo.model.to(device=device)
    keep = set(getattr(zoo.model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*zoo.model.named_parameters(), *zoo.model.named_buffers()]:
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    zoo.model.eval()
    return zoo


# ---------------------------------------------------------------- diffusers


def wan(size: str = "tiny", *, i2v: bool = False, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """Wan 2.1 (WanTransformer3DModel): patch_embedding Conv3d(16 -> D, (1,2,2)); I2V: 36 input channels + CLIP image.

    real: Wan 1.3B widths (12 heads x 128 = 1536; I2V 14B has 5120), 480p 81 frames latent (1, 16, 21, 60, 104).
    """
    from diffusers import WanTransformer3DModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    in_channels = 36 if i2v else 16
    image_dim = (32 if tiny else 1280) if i2v else None
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2 if tiny else 12,
        attention_head_dim=16 if tiny else 128,
        in_channels=in_channels,
        out_channels=16,
        text_dim=32 if tiny else 4096,
        freq_dim=32 if tiny else 256,
        ffn_dim=64 if tiny else 8960,
        num_layers=1,
        image_dim=image_dim,
        added_kv_proj_dim=(32 if tiny else 1536) if i2v else None,
        rope_max_seq_len=1024,
    )
    frames, height, width = (3, 8, 12) if tiny else (21, 60, 104)
    inputs: dict[str, Any] = {
        "hidden_states": _randn(1, in_channels, frames, height, width, dtype=dtype, device=device),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": _randn(1, 8 if tiny else 512, 32 if tiny else 4096, dtype=dtype, device=device),
        "return_dict": False,
    }
    if i2v:
        inputs["encoder_hidden_states_image"] = _randn(1, 5 if tiny else 257, image_dim, dtype=dtype, device=device)
    return _finish(ZooModel("wan_i2v" if i2v else "wan_t2v", model, inputs, ("patch_embedding",)), dtype, device)


def hunyuan_video(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """HunyuanVideo: x_embedder.proj Conv3d(16 -> 3072, (1,2,2)); one double-stream and one single-stream block.

    real: 24 heads x 128 = 3072, 480p 33 frames latent (1, 16, 9, 60, 104): its attention takes a mask, which
    rules out the flash kernel, so the token count stays at 14k.
    """
    from diffusers import HunyuanVideoTransformer3DModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    heads, head_dim = (2, 16) if tiny else (24, 128)
    model = HunyuanVideoTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        text_embed_dim=32 if tiny else 4096,
        pooled_projection_dim=16 if tiny else 768,
        rope_axes_dim=(4, 6, 6) if tiny else (16, 56, 56),
    )
    frames, height, width = (3, 8, 12) if tiny else (9, 60, 104)
    text_len = 6 if tiny else 256
    inputs = {
        "hidden_states": _randn(1, 16, frames, height, width, dtype=dtype, device=device),
        "timestep": torch.tensor([500], device=device),
        "encoder_hidden_states": _randn(1, text_len, 32 if tiny else 4096, dtype=dtype, device=device),
        "encoder_attention_mask": torch.ones(1, text_len, dtype=torch.long, device=device),
        "pooled_projections": _randn(1, 16 if tiny else 768, dtype=dtype, device=device),
        "guidance": torch.tensor([6000.0], dtype=dtype, device=device),
        "return_dict": False,
    }
    return _finish(ZooModel("hunyuan_video", model, inputs, ("x_embedder.proj",)), dtype, device)


def cogvideox(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """CogVideoX 2B: patch_embed.proj Conv2d(16 -> 1920, 2) on every frame; its output is ``view``-ed per frame.

    real: 30 heads x 64 = 1920, 49 frames 480x720 latent (1, 13, 16, 60, 90).
    """
    from diffusers import CogVideoXTransformer3DModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    frames, height, width = (2, 8, 12) if tiny else (13, 60, 90)
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2 if tiny else 30,
        attention_head_dim=16 if tiny else 64,
        in_channels=16,
        out_channels=16,
        time_embed_dim=32 if tiny else 512,
        text_embed_dim=32 if tiny else 4096,
        num_layers=1,
        sample_width=width,
        sample_height=height,
        sample_frames=(frames - 1) * 4 + 1,
        patch_size=2,
        max_text_seq_length=8 if tiny else 226,
    )
    inputs = {
        "hidden_states": _randn(1, frames, 16, height, width, dtype=dtype, device=device),
        "encoder_hidden_states": _randn(1, 8 if tiny else 226, 32 if tiny else 4096, dtype=dtype, device=device),
        "timestep": torch.tensor([500], device=device),
        "return_dict": False,
    }
    return _finish(ZooModel("cogvideox", model, inputs, ("patch_embed.proj",)), dtype, device)


def mochi(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """Mochi 1: patch_embed.proj Conv2d(12 -> 3072, 2) on every frame.

    real: 24 heads x 128 = 3072, 848x480 31 frames latent (1, 12, 6, 60, 106). Its attention processor calls
    nonzero (a data-dependent shape), so Dynamo gives up on the model's forward and compiles patch_embed's on its own.
    """
    from diffusers import MochiTransformer3DModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    model = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2 if tiny else 24,
        attention_head_dim=16 if tiny else 128,
        num_layers=1,
        pooled_projection_dim=32 if tiny else 1536,
        in_channels=12,
        text_embed_dim=32 if tiny else 4096,
        time_embed_dim=32 if tiny else 256,
        max_sequence_length=8 if tiny else 256,
    )
    frames, height, width = (2, 8, 12) if tiny else (6, 60, 106)
    text_len = 8 if tiny else 256
    inputs = {
        "hidden_states": _randn(1, 12, frames, height, width, dtype=dtype, device=device),
        "encoder_hidden_states": _randn(1, text_len, 32 if tiny else 4096, dtype=dtype, device=device),
        "timestep": torch.tensor([500], device=device),
        "encoder_attention_mask": torch.ones(1, text_len, dtype=torch.bool, device=device),
        "return_dict": False,
    }
    return _finish(ZooModel("mochi", model, inputs, ("patch_embed.proj",)), dtype, device)


def ace_step(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """ACE-Step 1.5 (AceStepTransformer1DModel): proj_in_conv Conv1d(192 -> 2048, 2) on a transposed (channels-last)
    input and proj_out_conv ConvTranspose1d(2048 -> 64, 2), the unpatchify: both are rewritten.

    real: 16 heads x 128 = 2048 (8 KV heads), 4096 latent frames, batch 1.
    """
    from diffusers import AceStepTransformer1DModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    hidden, heads, kv_heads, head_dim = (32, 2, 1, 16) if tiny else (2048, 16, 8, 128)
    acoustic, context = 64, 128  # in_channels 192 = acoustic (64) + context latents (128)
    model = AceStepTransformer1DModel(
        hidden_size=hidden,
        intermediate_size=64 if tiny else 6144,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        in_channels=acoustic + context,
        audio_acoustic_hidden_dim=acoustic,
        patch_size=2,
        sliding_window=4 if tiny else 128,
    )
    frames = 16 if tiny else 4096
    inputs = {
        "hidden_states": _randn(1, frames, acoustic, dtype=dtype, device=device),
        "timestep": torch.tensor([0.5], dtype=dtype, device=device),
        "timestep_r": torch.tensor([0.5], dtype=dtype, device=device),
        "encoder_hidden_states": _randn(1, 6 if tiny else 256, hidden, dtype=dtype, device=device),
        "context_latents": _randn(1, frames, context, dtype=dtype, device=device),
        "return_dict": False,
    }
    return _finish(ZooModel("ace_step", model, inputs, ("proj_in_conv", "proj_out_conv")), dtype, device)


# ---------------------------------------------------------------- transformers


def _grid_patches(
    grid: tuple[int, int, int], patch: int, temporal: int, dtype: torch.dtype, device: str
) -> dict[str, Any]:
    """Qwen-VL vision inputs: (N, 3 * temporal * patch * patch) flattened patches and grid_thw (one image/video)."""
    t, h, w = grid
    return {
        "hidden_states": _randn(t * h * w, 3 * temporal * patch * patch, dtype=dtype, device=device),
        "grid_thw": torch.tensor([[t, h, w]], device=device),
    }


def qwen2_5_vl_vision(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """Qwen2.5-VL vision tower: patch_embed.proj Conv3d(3 -> 1280, (2,14,14), bias=False) on (N, 3, 2, 14, 14).

    real: hidden 1280, 16 heads, 2 blocks (one windowed, one full attention), 16384 patches (grid 1 x 128 x 128).
    grid_thw is read with .tolist() (data-dependent): Dynamo compiles patch_embed's forward on its own.
    """
    from transformers import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    config = Qwen2_5_VLVisionConfig(
        depth=2,
        hidden_size=32 if tiny else 1280,
        num_heads=2 if tiny else 16,
        intermediate_size=64 if tiny else 3420,
        out_hidden_size=32 if tiny else 3584,
        patch_size=14,
        temporal_patch_size=2,
        spatial_merge_size=2,
        window_size=56 if tiny else 112,
        fullatt_block_indexes=[1],
    )
    config._attn_implementation = "sdpa"
    model = Qwen2_5_VisionTransformerPretrainedModel._from_config(config)
    inputs = _grid_patches((1, 8, 8) if tiny else (1, 128, 128), 14, 2, dtype, device)
    zoo = ZooModel("qwen2_5_vl_vision", model, inputs, ("patch_embed.proj",), output=_first)
    return _finish(zoo, dtype, device)


def qwen3_vl_vision(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """Qwen3-VL vision tower: patch_embed.proj Conv3d(3 -> 1152, (2,16,16)) on (N, 3, 2, 16, 16).

    real: hidden 1152, 16 heads, 2 blocks (the second feeds deepstack), 16384 patches. As in Qwen2.5-VL, Dynamo
    compiles patch_embed's forward on its own.
    """
    from transformers import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    config = Qwen3VLVisionConfig(
        depth=2,
        hidden_size=32 if tiny else 1152,
        num_heads=2 if tiny else 16,
        intermediate_size=64 if tiny else 4304,
        out_hidden_size=32 if tiny else 3584,
        patch_size=16,
        temporal_patch_size=2,
        spatial_merge_size=2,
        num_position_embeddings=64 if tiny else 2304,
        deepstack_visual_indexes=[1],
    )
    config._attn_implementation = "sdpa"
    model = Qwen3VLVisionModel._from_config(config)
    inputs = _grid_patches((1, 8, 8) if tiny else (1, 128, 128), 16, 2, dtype, device)
    zoo = ZooModel("qwen3_vl_vision", model, inputs, ("patch_embed.proj",), output=_first)
    return _finish(zoo, dtype, device)


def _first(out: Any) -> torch.Tensor:
    """The first tensor of a transformers ModelOutput (last_hidden_state) or tuple."""
    return out[0]


def videomae(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """VideoMAE-B: embeddings.patch_embeddings.projection Conv3d(3 -> 768, (2,16,16)).

    real: hidden 768, 12 heads, 16 frames 224x224, batch 8: (8, 16, 3, 224, 224) (frames before channels).
    """
    from transformers import VideoMAEConfig, VideoMAEModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    frames, image = (4, 64) if tiny else (16, 224)
    config = VideoMAEConfig(
        image_size=image,
        patch_size=16,
        num_frames=frames,
        tubelet_size=2,
        hidden_size=32 if tiny else 768,
        num_hidden_layers=1,
        num_attention_heads=2 if tiny else 12,
        intermediate_size=64 if tiny else 3072,
        attn_implementation="sdpa",
    )
    model = VideoMAEModel(config)
    inputs = {"pixel_values": _randn(2 if tiny else 8, frames, 3, image, image, dtype=dtype, device=device)}
    return _finish(
        ZooModel("videomae", model, inputs, ("embeddings.patch_embeddings.projection",), output=_first), dtype, device
    )


def vivit(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """ViViT-B: embeddings.patch_embeddings.projection Conv3d(3 -> 768, (2,16,16)); 32 frames 224x224."""
    from transformers import VivitConfig, VivitModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    frames, image = (4, 64) if tiny else (32, 224)
    config = VivitConfig(
        image_size=image,
        num_frames=frames,
        tubelet_size=[2, 16, 16],
        hidden_size=32 if tiny else 768,
        num_hidden_layers=1,
        num_attention_heads=2 if tiny else 12,
        intermediate_size=64 if tiny else 3072,
        attn_implementation="sdpa",
    )
    model = VivitModel(config, add_pooling_layer=False)
    inputs = {"pixel_values": _randn(2 if tiny else 8, frames, 3, image, image, dtype=dtype, device=device)}
    return _finish(
        ZooModel("vivit", model, inputs, ("embeddings.patch_embeddings.projection",), output=_first), dtype, device
    )


def siglip_vision(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """SigLIP so400m/14 at 384: embeddings.patch_embedding Conv2d(3 -> 1152, 14); 384 = 27 * 14 + 6, so the conv
    drops the last 6 rows and columns (the rewrite crops them)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    image = 62 if tiny else 384  # 62 = 4 * 14 + 6: the same trailing remainder as 384
    config = SiglipVisionConfig(
        image_size=image,
        patch_size=14,
        hidden_size=32 if tiny else 1152,
        num_hidden_layers=1,
        num_attention_heads=2 if tiny else 16,
        intermediate_size=64 if tiny else 4304,
        attn_implementation="sdpa",
    )
    model = SiglipVisionModel(config)
    inputs = {"pixel_values": _randn(2 if tiny else 16, 3, image, image, dtype=dtype, device=device)}
    return _finish(
        ZooModel("siglip_vision", model, inputs, ("embeddings.patch_embedding",), output=_first),
        dtype,
        device,
    )


def clip_vision(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """CLIP ViT-L/14 at 336: embeddings.patch_embedding Conv2d(3 -> 1024, 14, bias=False)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    image = 56 if tiny else 336
    config = CLIPVisionConfig(
        image_size=image,
        patch_size=14,
        hidden_size=32 if tiny else 1024,
        num_hidden_layers=1,
        num_attention_heads=2 if tiny else 16,
        intermediate_size=64 if tiny else 4096,
        projection_dim=32 if tiny else 768,
        attn_implementation="sdpa",
    )
    model = CLIPVisionModel(config)
    inputs = {"pixel_values": _randn(2 if tiny else 32, 3, image, image, dtype=dtype, device=device)}
    return _finish(
        ZooModel("clip_vision", model, inputs, ("embeddings.patch_embedding",), output=_first),
        dtype,
        device,
    )


# ---------------------------------------------------------------- MONAI


_UNETR_STRIDE_EQ_KERNEL = (
    "vit.patch_embedding.patch_embeddings",
    "encoder1.layer.conv3.conv",
    *(f"decoder{i}.conv_block.conv3.conv" for i in (5, 4, 3, 2)),
    "out.conv.conv",
    "encoder2.transp_conv_init.conv",
    "encoder2.blocks.0.0.conv",
    "encoder2.blocks.1.0.conv",
    "encoder3.transp_conv_init.conv",
    "encoder3.blocks.0.0.conv",
    "encoder4.transp_conv_init.conv",
    *(f"decoder{i}.transp_conv.conv" for i in (5, 4, 3, 2)),
)


def unetr(size: str = "tiny", *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ZooModel:
    """MONAI UNETR: vit.patch_embedding.patch_embeddings Conv3d(1 -> 768, 16), the 1x1x1 convs (residual
    projections and the output head: k = s = 1 is a patchify conv too) and the decoder's ConvTranspose3d (k = s = 2)
    are rewritten; the 3x3x3 convs (stride 1) must stay.

    UNETR always builds 12 ViT layers (it taps layers 3, 6, 9, 12). real: hidden 768, (1, 1, 96, 96, 96).
    """
    from monai.networks.nets import UNETR

    _check_size(size)
    torch.manual_seed(0)
    tiny = size == "tiny"
    image = 32 if tiny else 96
    model = UNETR(
        in_channels=1,
        out_channels=2,
        img_size=image,
        feature_size=4 if tiny else 16,
        hidden_size=32 if tiny else 768,
        mlp_dim=64 if tiny else 3072,
        num_heads=2 if tiny else 12,
    )
    inputs = {"x_in": _randn(1, 1, image, image, image, dtype=dtype, device=device)}
    return _finish(
        ZooModel("unetr", model, inputs, _UNETR_STRIDE_EQ_KERNEL, output=lambda out: out),
        dtype,
        device,
    )


FACTORIES: dict[str, Callable[..., ZooModel]] = {
    "wan_t2v": wan,
    "wan_i2v": lambda size="tiny", **kw: wan(size, i2v=True, **kw),
    "hunyuan_video": hunyuan_video,
    "cogvideox": cogvideox,
    "mochi": mochi,
    "ace_step": ace_step,
    "qwen2_5_vl_vision": qwen2_5_vl_vision,
    "qwen3_vl_vision": qwen3_vl_vision,
    "videomae": videomae,
    "vivit": vivit,
    "siglip_vision": siglip_vision,
    "clip_vision": clip_vision,
    "unetr": unetr,
}
"""name -> factory(size="tiny", *, dtype, device)."""

REQUIRES: dict[str, tuple[str, ...]] = {
    **{name: ("diffusers",) for name in ("wan_t2v", "wan_i2v", "hunyuan_video", "cogvideox", "mochi", "ace_step")},
    **{name: ("transformers",) for name in ("qwen2_5_vl_vision", "qwen3_vl_vision", "videomae", "vivit")},
    **{name: ("transformers",) for name in ("siglip_vision", "clip_vision")},
    "unetr": ("monai", "einops"),
}
"""name -> the packages its factory imports (the ``zoo`` extra)."""
