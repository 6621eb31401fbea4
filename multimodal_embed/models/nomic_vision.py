"""nomic-embed-vision v1 / v1.5: an EVA02-style ViT with a MAP "selector" head, checkpoint-compatible.

Follows ``shared/spec/nomic-architecture.md`` sections 7-8: pre-LN blocks with 2-D axial RoPE (timm's
``RotaryEmbeddingCat``, interleaved rotation) on the patch tokens, SwiGLU with an inner LayerNorm (eps 1e-5),
a free K-bias in ``Wqkv``, learned absolute positions (no interpolation), no final norm; the selector's
attention-pooled vector goes through LN + SwiGLU and is *added to every token*; the embedding is token 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .nomic_bert import MAX_HIDDEN, MAX_LAYERS, check_transformer_sizes, config_int

__all__ = ["NomicVisionConfig", "NomicVisionModel", "convert_state_dict"]

# key -> the only value we can honour
_REQUIRED = {
    "prenorm": True,
    "activation_function": "swiglu",
    "use_rotary_pos_emb": True,
    "use_pos_embed": True,
    "learned_pos_embedding": False,
    "sinusoidal_pos_embedding": False,
    "no_cls_token": False,
    "no_embed_class": False,
    "register_tokens": 0,
    "global_pool": None,
    "layer_scale": False,
    "parallel_block": False,
    "use_rms_norm": False,
    "prepre_layernom": False,
    "mask_token": False,
}


MAX_IMG_SIZE = 8192
MAX_PATCHES = 1 << 16


@dataclass(frozen=True)
class NomicVisionConfig:
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 2048
    img_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    layer_norm_eps: float = 1e-6
    mlp_norm_eps: float = 1e-5
    ref_feat_shape: tuple[int, int] = (14, 14)
    qkv_bias: bool = True
    mlp_fc1_bias: bool = True
    mlp_fc2_bias: bool = True
    patch_embed_bias: bool = True
    norm_mlp: bool = True

    def __post_init__(self) -> None:
        for key, value, high in (("hidden_size", self.hidden_size, MAX_HIDDEN),
                                 ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
                                 ("num_attention_heads", self.num_attention_heads, MAX_HIDDEN),
                                 ("intermediate_size", self.intermediate_size, 8 * MAX_HIDDEN),
                                 ("img_size", self.img_size, MAX_IMG_SIZE), ("patch_size", self.patch_size, 1024),
                                 ("num_channels", self.num_channels, 16)):
            config_int({key: value}, key, 0, low=1, high=high)
        if self.img_size % self.patch_size:
            raise ConfigError(f"config key img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.grid ** 2 > MAX_PATCHES:
            raise ConfigError(f"config keys img_size={self.img_size} / patch_size={self.patch_size} give "
                              f"{self.grid ** 2} patches (limit {MAX_PATCHES})")
        if min(self.ref_feat_shape) < 1 or max(self.ref_feat_shape) > MAX_IMG_SIZE:
            raise ConfigError(f"config key ref_feat_shape={list(self.ref_feat_shape)} is out of range")
        other = (self.grid ** 2 + 1) * self.hidden_size + self.num_channels * self.patch_size ** 2 * self.hidden_size
        check_transformer_sizes(self.hidden_size, self.num_attention_heads, self.num_hidden_layers,
                                self.intermediate_size, other, names=("n_embd", "n_head"))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any]) -> NomicVisionConfig:
        """Translate the original hub ``config.json`` (``n_inner`` may be a float, e.g. ``2048.0``)."""
        for key, ok in _REQUIRED.items():
            if key in cfg and cfg[key] != ok and not (ok is False and cfg[key] is None):
                raise ConfigError(f"config key {key}={cfg[key]!r} is not supported by this implementation "
                                  f"(only {ok!r})")
        if float(cfg.get("rotary_emb_fraction", 0) or 0) != 0:
            raise ConfigError("config key rotary_emb_fraction != 0 (1-D rotary in a vision model) is not supported")
        img = config_int(cfg, "img_size", 224, high=MAX_IMG_SIZE)
        patch = config_int(cfg, "patch_size", 16, high=1024)
        if img % patch:
            raise ConfigError(f"config key img_size={img} is not a multiple of patch_size={patch}")
        if (img // patch) ** 2 > MAX_PATCHES:
            raise ConfigError(f"config keys img_size={img} / patch_size={patch} give {(img // patch) ** 2} patches "
                              f"(limit {MAX_PATCHES})")
        hidden = config_int(cfg, "n_embd", 768, high=MAX_HIDDEN)
        heads = config_int(cfg, "n_head", 12, high=MAX_HIDDEN)
        layers = config_int(cfg, "n_layer", 12, high=MAX_LAYERS)
        n_inner = config_int(cfg, "n_inner", 4 * hidden, high=8 * MAX_HIDDEN)
        channels = config_int(cfg, "num_channels", 3, high=16)
        check_transformer_sizes(hidden, heads, layers, n_inner,
                                ((img // patch) ** 2 + 1) * hidden + channels * patch * patch * hidden,
                                names=("n_embd", "n_head"))
        ref = cfg.get("ref_feat_shape") or [img // patch, img // patch]
        if not isinstance(ref, (list, tuple)) or len(ref) != 2:
            raise ConfigError(f"config key ref_feat_shape={ref!r} must be a pair of integers")
        ref_pair = {"ref_feat_shape[0]": ref[0], "ref_feat_shape[1]": ref[1]}
        return cls(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=n_inner,
            img_size=img,
            patch_size=patch,
            num_channels=channels,
            layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-6)),
            ref_feat_shape=(config_int(ref_pair, "ref_feat_shape[0]", 0, high=MAX_IMG_SIZE),
                            config_int(ref_pair, "ref_feat_shape[1]", 0, high=MAX_IMG_SIZE)),
            qkv_bias=bool(cfg.get("qkv_proj_bias", True)),
            mlp_fc1_bias=bool(cfg.get("mlp_fc1_bias", True)),
            mlp_fc2_bias=bool(cfg.get("mlp_fc2_bias", True)),
            patch_embed_bias=bool(cfg.get("patch_embed_bias", True)),
            norm_mlp=bool(cfg.get("norm_mlp", True)),
        )


class _Embeddings(nn.Module):
    def __init__(self, cfg: NomicVisionConfig):
        super().__init__()
        from timm.layers import RotaryEmbeddingCat

        self.patch_size = cfg.patch_size
        n = cfg.grid * cfg.grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, cfg.hidden_size))
        self.proj = nn.Linear(cfg.num_channels * cfg.patch_size ** 2, cfg.hidden_size, bias=cfg.patch_embed_bias)
        self.rope = RotaryEmbeddingCat(cfg.head_dim, in_pixels=False, feat_shape=[cfg.grid, cfg.grid],
                                       ref_feat_shape=list(cfg.ref_feat_shape))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        # b c (h p1) (w p2) -> b (h w) (c p1 p2)
        x = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        x = self.proj(x)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        return x + self.pos_embed.to(x.dtype)


class _Attention(nn.Module):
    def __init__(self, cfg: NomicVisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.Wqkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """``rope``: ``(1 + patches, 2 * head_dim)`` sin|cos rows; the CLS row (sin 0, cos 1) leaves it unrotated."""
        from timm.layers import apply_rot_embed_cat

        b, n, _ = x.shape
        q, k, v = self.Wqkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(apply_rot_embed_cat(q, rope), apply_rot_embed_cat(k, rope), v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class _GatedMLP(nn.Module):
    def __init__(self, cfg: NomicVisionConfig, inner_norm: bool):
        super().__init__()
        self.fc11 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_fc1_bias)  # value
        self.fc12 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_fc1_bias)  # gate
        self.norm = nn.LayerNorm(cfg.intermediate_size, eps=cfg.mlp_norm_eps) if inner_norm else nn.Identity()
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.fc2(self.norm(self.fc11(x) * F.silu(self.fc12(x))))
        gate = F.silu(self.fc12(x), inplace=True)  # in place: no autograd, less memory traffic, same numbers
        return self.fc2(self.norm(gate.mul_(self.fc11(x))))


class _Block(nn.Module):
    def __init__(self, cfg: NomicVisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = _Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _GatedMLP(cfg, inner_norm=cfg.norm_mlp)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class _PoolAttention(nn.Module):
    def __init__(self, cfg: NomicVisionConfig):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.Wq = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)
        self.Wkv = nn.Linear(cfg.hidden_size, 2 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=cfg.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.Wq(self.latent.expand(b, -1, -1).to(x.dtype)).view(b, 1, self.num_heads, self.head_dim)
        k, v = self.Wkv(x).view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, 1, -1))


class _Selector(nn.Module):
    """Multi-head attention pooling whose output is added to every trunk token (not timm's AttentionPoolLatent)."""

    def __init__(self, cfg: NomicVisionConfig):
        super().__init__()
        self.attn = _PoolAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _GatedMLP(cfg, inner_norm=False)

    def forward(self, trunk: torch.Tensor) -> torch.Tensor:
        return trunk + self.mlp(self.norm1(self.attn(trunk)))


class NomicVisionModel(nn.Module):
    """Returns ``(trunk, last_hidden_state)``; the image embedding is ``normalize(last_hidden_state[:, 0])``."""

    def __init__(self, config: NomicVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_hidden_layers))
        self.selector = _Selector(config)

    def forward_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.img_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ConfigError(f"expected {size}x{size} pixel values, got {tuple(pixel_values.shape[-2:])}")
        x = self.embeddings(pixel_values)
        rope = self.embeddings.rope.get_embed().to(device=x.device)
        # x * 1 + rot(x) * 0 == x exactly: one table for all tokens instead of slicing and concatenating
        sin_cos = torch.zeros(1, rope.shape[-1], dtype=rope.dtype, device=rope.device)
        sin_cos[:, rope.shape[-1] // 2:] = 1
        rope = torch.cat([sin_cos, rope])
        for layer in self.layers:
            x = layer(x, rope)
        return x, self.selector(x)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image embeddings (unnormalised token 0 of the selector output), ``(B, D)``."""
        return self.forward_features(pixel_values)[1][:, 0]


_IGNORED = ("rope.pos_embed", "norm_factor", "inv_freq")


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original hub key names map one to one; drop non-persistent buffers and a ``vision.`` prefix."""
    out = {}
    for key, value in state.items():
        if key.endswith(_IGNORED):
            continue
        for prefix in ("vision_model.", "vision.", "model."):
            key = key.removeprefix(prefix)
        if key == "embeddings.proj.weight" and value.ndim == 4:  # a Conv2d patch embedding
            value = value.reshape(value.shape[0], -1)
        out[key] = value
    return out
