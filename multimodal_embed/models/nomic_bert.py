"""NomicBERT, the text tower of nomic-embed-text v1 / v1.5 / v2-moe, as a plain PyTorch module.

Readable top to bottom and checkpoint-compatible: parameter names are those of the original hub checkpoints
(``encoder.layers.{i}.attn.Wqkv`` ...), and :func:`convert_state_dict` also accepts the transformers-5 native
layout. The forward pass follows ``shared/spec/nomic-architecture.md`` section 6: post-LN blocks, rotate-half
RoPE over the whole head, SwiGLU with SiLU on ``fc12``, and a *stateless* dynamic-NTK rotary that depends only on
the padded length of the current call (the reference caches it across calls; see the spec, section 6.2).

nomic-embed-text-v2-moe (``shared/spec/nomic-v2-moe.md``) is the same skeleton by configuration: biases on every
projection, a GELU ``fc1``/``fc2`` MLP, and on every second block the mixture of experts of
:mod:`multimodal_embed.models.nomic_moe` (``activation="gelu"``, ``num_experts``, ``moe_every_n_layers``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from .nomic_moe import NomicMoELayer
from .packing import Packing, packed_attention

__all__ = ["NomicBertConfig", "NomicBertModel", "Packing", "convert_state_dict", "load_converted", "packed_attention",
           "rotary_base_for_length"]

# Keys whose values change the math and which we cannot honour: key -> (value we support, explanation).
_UNSUPPORTED_IF = {
    "prenorm": (False, "pre-LN text blocks"),
    "rotary_emb_interleaved": (False, "interleaved (GPT-J style) rotary"),
    "causal": (False, "causal attention"),
    "parallel_block": (False, "parallel attention/MLP blocks"),
    "use_rms_norm": (False, "RMSNorm"),
    "rotary_emb_scale_base": (None, "xPos rotary scaling"),
    "num_shared_experts": (0, "shared experts"),
    "expert_choice_router": (False, "expert-choice routing"),
    # the original's two MoE paths disagree on it (the pure-torch layer ignores it, megablocks renormalises)
    "moe_normalize_expert_weights": (False, "renormalised top-k expert weights"),
}
ACTIVATIONS = ("swiglu", "gelu")  # SwiGLU fc11/fc12/fc2 (v1, v1.5) or GELU (erf) fc1/fc2 (v2-moe)


# config.json is read before anything is allocated: sizes outside these bounds are refused with a ConfigError
# naming the key (a tampered config must not make the loader allocate terabytes or divide by zero).
MAX_PARAMETERS = 4_000_000_000  # 16 GB of float32; nomic-embed-text is 137M, nomic-embed-vision 93M
MAX_HIDDEN = 8192
MAX_LAYERS = 256
MAX_VOCAB = 1_000_000
MAX_POSITIONS = 1 << 20


def config_int(cfg: Mapping[str, Any], key: str, default: int, *, low: int = 1, high: int) -> int:
    """``cfg[key]`` (or ``default``) as an int in ``[low, high]``, or :class:`ConfigError` naming the key."""
    value = cfg.get(key)
    if value is None:
        return default
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or number != int(number):
        raise ConfigError(f"config key {key}={value!r} must be an integer")
    if not low <= int(number) <= high:
        raise ConfigError(f"config key {key}={int(number)} is out of range (expected {low} to {high})")
    return int(number)


def check_transformer_sizes(hidden: int, heads: int, layers: int, inner: int, other: int, *,
                            names: tuple[str, str] = ("hidden_size", "num_attention_heads")) -> None:
    """Heads divide the width into even head sizes, and the parameter count stays under ``MAX_PARAMETERS``."""
    if heads < 1 or hidden % heads:
        raise ConfigError(f"config key {names[0]}={hidden} is not divisible by {names[1]}={heads}")
    if (hidden // heads) % 2:
        raise ConfigError(f"config keys {names[0]}={hidden} / {names[1]}={heads} give an odd head size "
                          f"{hidden // heads} (rotary embeddings need an even one)")
    params = layers * (4 * hidden * hidden + 3 * hidden * inner) + other
    if params > MAX_PARAMETERS:
        raise ConfigError(f"config describes a model of {params:.3g} parameters (over the {MAX_PARAMETERS:.3g} "
                          f"limit): check {names[0]}, the layer count and the inner size")


@dataclass(frozen=True)
class NomicBertConfig:
    """Architecture of a NomicBERT text encoder (names follow transformers' BERT configs)."""

    vocab_size: int = 30528
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    rotary_base: float = 1000.0
    rotary_scaling_factor: float | None = None
    max_trained_positions: int = 2048
    max_positions: int = 8192
    qkv_bias: bool = False
    mlp_fc1_bias: bool = False
    mlp_fc2_bias: bool = False
    activation: str = "swiglu"
    num_experts: int = 0  # > 0: a mixture of experts on the blocks is_moe_layer() names
    moe_top_k: int = 2
    moe_every_n_layers: int = 0

    def __post_init__(self) -> None:
        for key, value, high in (("hidden_size", self.hidden_size, MAX_HIDDEN),
                                 ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
                                 ("num_attention_heads", self.num_attention_heads, MAX_HIDDEN),
                                 ("intermediate_size", self.intermediate_size, 8 * MAX_HIDDEN),
                                 ("vocab_size", self.vocab_size, MAX_VOCAB),
                                 ("type_vocab_size", self.type_vocab_size, MAX_VOCAB),
                                 ("max_trained_positions", self.max_trained_positions, MAX_POSITIONS),
                                 ("max_positions", self.max_positions, MAX_POSITIONS)):
            config_int({key: value}, key, 0, low=1, high=high)
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation!r} is not supported; use one of {ACTIVATIONS}")
        if self.num_experts:
            config_int({"num_experts": self.num_experts}, "num_experts", 0, high=1024)
            config_int({"moe_top_k": self.moe_top_k}, "moe_top_k", 0, high=self.num_experts)
            config_int({"moe_every_n_layers": self.moe_every_n_layers}, "moe_every_n_layers", 0,
                       high=MAX_LAYERS)
            if self.activation != "gelu":
                raise ConfigError("a mixture of experts needs activation 'gelu' (GELU experts)")
        moe_layers = sum(map(self.is_moe_layer, range(self.num_hidden_layers)))
        experts = moe_layers * (self.num_experts - 1) * 2 * self.hidden_size * self.intermediate_size
        check_transformer_sizes(self.hidden_size, self.num_attention_heads, self.num_hidden_layers,
                                self.intermediate_size,
                                (self.vocab_size + self.type_vocab_size) * self.hidden_size + experts)
        if self.rotary_scaling_factor is not None and self.rotary_scaling_factor < 1:
            raise ConfigError(f"rotary_scaling_factor must be >= 1, got {self.rotary_scaling_factor}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, index: int) -> bool:
        """Whether block ``index`` has the mixture of experts: the original's rule, ``index % n == 1`` for
        ``moe_every_n_layers = n`` (v2-moe: blocks 1, 3, 5, ...; not 0, 2, 4)."""
        n = self.moe_every_n_layers
        return bool(self.num_experts) and n > 0 and index % n == 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_hf_dict(cls, cfg: Mapping[str, Any]) -> NomicBertConfig:
        """Translate a hub ``config.json``: the original (GPT-2 style keys) or the transformers-5 native format."""
        if cfg.get("model_type") not in (None, "nomic_bert"):
            raise ConfigError(f"expected a nomic_bert config, got model_type={cfg.get('model_type')!r}")
        if "n_embd" in cfg or "n_layer" in cfg:
            return cls._from_original(cfg)
        return cls._from_native(cfg)

    @classmethod
    def _from_original(cls, cfg: Mapping[str, Any]) -> NomicBertConfig:
        for key, (ok, what) in _UNSUPPORTED_IF.items():
            value = cfg.get(key, ok)
            if value != ok and not (ok is False and value is None):
                raise ConfigError(f"config key {key}={value!r} ({what}) is not supported by this implementation")
        fraction = float(cfg.get("rotary_emb_fraction", 1.0) or 0.0)
        if fraction != 1.0:
            raise ConfigError(
                f"config key rotary_emb_fraction={fraction} (partial rotary) is not supported; only 1.0 is"
            )
        act = cfg.get("activation_function", "swiglu")
        if act not in ACTIVATIONS:
            raise ConfigError(f"config key activation_function={act!r} is not supported; only 'swiglu' (SwiGLU) "
                              f"and 'gelu' (exact GELU) are")
        if cfg.get("use_pos_embed") or cfg.get("learned_pos_embedding"):
            raise ConfigError("absolute position embeddings in a text config are not supported")
        hidden = config_int(cfg, "n_embd", 768, high=MAX_HIDDEN)
        heads = config_int(cfg, "n_head", 12, high=MAX_HIDDEN)
        layers = config_int(cfg, "n_layer", 12, high=MAX_LAYERS)
        n_inner = config_int(cfg, "n_inner", 4 * hidden, high=8 * MAX_HIDDEN)
        # The reference gated MLP rounds the hidden size up to a multiple of 256 (its plain MLP and experts do not).
        inner = int((n_inner + 255) // 256 * 256) if act == "swiglu" else n_inner
        experts = config_int(cfg, "num_experts", 0, low=0, high=1024)
        every = config_int(cfg, "moe_every_n_layers", 0, low=0, high=MAX_LAYERS) if experts else 0
        vocab = config_int(cfg, "vocab_size", 30528, high=MAX_VOCAB)
        type_vocab = config_int(cfg, "type_vocab_size", 2, high=MAX_VOCAB)
        check_transformer_sizes(hidden, heads, layers, inner, (vocab + type_vocab) * hidden, names=("n_embd", "n_head"))
        multiple = config_int(cfg, "pad_vocab_size_multiple", 1, high=1 << 16)
        if vocab % multiple:
            vocab += multiple - vocab % multiple
        scaling = cfg.get("rotary_scaling_factor")
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inner,
            type_vocab_size=type_vocab,
            layer_norm_eps=float(cfg.get("layer_norm_epsilon", 1e-12)),
            rotary_base=float(cfg.get("rotary_emb_base", 1000)),
            rotary_scaling_factor=float(scaling) if scaling else None,
            max_trained_positions=config_int(cfg, "max_trained_positions", 2048, high=MAX_POSITIONS),
            max_positions=config_int(cfg, "n_positions", 8192, low=0, high=MAX_POSITIONS) or 8192,
            qkv_bias=bool(cfg.get("qkv_proj_bias", False)),
            mlp_fc1_bias=bool(cfg.get("mlp_fc1_bias", False)),
            mlp_fc2_bias=bool(cfg.get("mlp_fc2_bias", False)),
            activation=act,
            num_experts=experts if every else 0,
            moe_top_k=config_int(cfg, "moe_top_k", 1, high=max(experts, 1)) if experts and every else 2,
            moe_every_n_layers=every,
        )

    @classmethod
    def _from_native(cls, cfg: Mapping[str, Any]) -> NomicBertConfig:
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"config key hidden_act={act!r} is not supported; only 'silu' (SwiGLU) is")
        hidden = config_int(cfg, "hidden_size", 768, high=MAX_HIDDEN)
        heads = config_int(cfg, "num_attention_heads", 12, high=MAX_HIDDEN)
        layers = config_int(cfg, "num_hidden_layers", 12, high=MAX_LAYERS)
        inner = config_int(cfg, "intermediate_size", 3072, high=8 * MAX_HIDDEN)
        vocab = config_int(cfg, "vocab_size", 30528, high=MAX_VOCAB)
        type_vocab = config_int(cfg, "type_vocab_size", 2, high=MAX_VOCAB)
        positions = config_int(cfg, "max_position_embeddings", 2048, high=MAX_POSITIONS)
        check_transformer_sizes(hidden, heads, layers, inner, (vocab + type_vocab) * hidden)
        head_dim = cfg.get("head_dim")
        if head_dim is not None and int(head_dim) * heads != hidden:
            raise ConfigError(f"config key head_dim={head_dim} with {heads} heads != hidden size {hidden}")
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "dynamic"):
            raise ConfigError(f"rope_type={rope_type!r} is not supported; only 'default' and 'dynamic' are")
        if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
            raise ConfigError("partial rotary (partial_rotary_factor != 1) is not supported")
        theta = rope.get("rope_theta", cfg.get("rope_theta", 1000.0))
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inner,
            type_vocab_size=type_vocab,
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
            rotary_base=float(theta),
            rotary_scaling_factor=float(rope["factor"]) if rope_type == "dynamic" else None,
            max_trained_positions=positions,
            max_positions=max(8192, positions),
        )


def rotary_base_for_length(config: NomicBertConfig, length: int) -> float:
    """RoPE base for a padded length: dynamic NTK scaling past ``max_trained_positions`` when enabled."""
    s = config.rotary_scaling_factor
    if not s or length <= config.max_trained_positions:
        return config.rotary_base
    dim = config.head_dim
    return config.rotary_base * ((s * length / config.max_trained_positions) - (s - 1)) ** (dim / (dim - 2))


def _rotary_cos_sin(config: NomicBertConfig, length: int, device: torch.device, dtype: torch.dtype):
    dim = config.head_dim
    base = rotary_base_for_length(config, length)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    t = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # (L, dim): rotate-half layout
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class NomicBertAttention(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | Packing | None):
        if isinstance(mask, Packing):  # x: (T, D) packed tokens; cos, sin: (T, Dh) at each token's position
            t = x.shape[0]
            q, k, v = self.Wqkv(x).view(t, 3, self.num_heads, self.head_dim).unbind(1)  # (T, H, Dh)
            cos, sin = cos[:, None], sin[:, None]
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            return self.out_proj(packed_attention(q, k, v, mask).reshape(t, -1))
        b, n, _ = x.shape
        qkv = self.Wqkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, L, Dh)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class NomicBertMLP(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.fc11 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_fc1_bias)  # value
        self.fc12 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_fc1_bias)  # gate
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.fc2(self.fc11(x) * F.silu(self.fc12(x)))
        gate = F.silu(self.fc12(x), inplace=True)  # in place: no autograd, less memory traffic
        return self.fc2(gate.mul_(self.fc11(x)))


class NomicBertGeluMLP(nn.Module):
    """The plain MLP (``activation_function="gelu"``): ``fc2(gelu(fc1(x)))``, exact (erf) GELU."""

    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.mlp_fc1_bias)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.mlp_fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _mlp(config: NomicBertConfig, index: int) -> nn.Module:
    if config.is_moe_layer(index):
        return NomicMoELayer(config.hidden_size, config.intermediate_size, config.num_experts, config.moe_top_k)
    return NomicBertGeluMLP(config) if config.activation == "gelu" else NomicBertMLP(config)


class NomicBertBlock(nn.Module):
    def __init__(self, config: NomicBertConfig, index: int = 0):
        super().__init__()
        self.attn = NomicBertAttention(config)
        self.mlp = _mlp(config, index)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = self.norm1(x + self.attn(x, cos, sin, mask))
        return self.norm2(x + self.mlp(x))


class _Embeddings(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(max(config.type_vocab_size, 1), config.hidden_size)


class _Encoder(nn.Module):
    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.layers = nn.ModuleList(NomicBertBlock(config, i) for i in range(config.num_hidden_layers))


class NomicBertModel(nn.Module):
    """NomicBERT encoder returning the last hidden state ``(B, L, D)`` (no pooling, no final norm)."""

    def __init__(self, config: NomicBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = _Encoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _, n = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings.word_embeddings(input_ids) + self.embeddings.token_type_embeddings(token_type_ids)
        x = self.emb_ln(x)
        cos, sin = _rotary_cos_sin(self.config, n, x.device, x.dtype)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Boolean key mask (B, 1, 1, L): padded keys are never attended to.
            mask = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, mask)
        return x

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        rotary_length: int | None = None,
    ) -> torch.Tensor:
        """Unpadded forward: ``input_ids`` ``(T,)`` are sequences packed end to end, ``cu_seqlens`` ``(B + 1,)``
        their boundaries; returns ``(T, D)``. Equal to :meth:`forward` on the right-padded batch (whose padded
        length, which sets the dynamic-NTK rotary base, is the longest sequence unless ``rotary_length`` says
        otherwise), without computing the padding."""
        packing = Packing(cu_seqlens)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings.word_embeddings(input_ids) + self.embeddings.token_type_embeddings(token_type_ids)
        x = self.emb_ln(x)
        cos, sin = _rotary_cos_sin(self.config, rotary_length or packing.max_len, x.device, x.dtype)
        cos, sin = cos[packing.positions], sin[packing.positions]
        for layer in self.encoder.layers:
            x = layer(x, cos, sin, packing)
        return x


# ----------------------------------------------------------------------------------------------------------
# Checkpoint conversion (original hub names and transformers-5 native names -> this module's names)

_NATIVE_RENAMES = (
    ("embeddings.LayerNorm.", "emb_ln."),
    ("self_attn.o_proj.", "attn.out_proj."),
    ("mlp.up_proj.", "mlp.fc11."),
    ("mlp.gate_proj.", "mlp.fc12."),
    ("mlp.down_proj.", "mlp.fc2."),
    ("post_attention_layernorm.", "norm1."),
    ("post_mlp_layernorm.", "norm2."),
)
_IGNORED_SUFFIXES = ("inv_freq", "original_inv_freq", "norm_factor", "position_ids", "token_type_ids")


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint in the original or the transformers-5 native layout onto :class:`NomicBertModel`."""
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith(("cls.", "pooler.")) or key.endswith(_IGNORED_SUFFIXES):
            continue  # MLM head / pooler / non-persistent buffers
        for prefix in ("nomic_bert.", "bert.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key.startswith("layers."):  # native layout
            key = "encoder." + key
            for old, new in _NATIVE_RENAMES:
                key = key.replace(old, new)
            head, _, tail = key.partition(".self_attn.")
            if tail:
                proj, _, param = tail.partition(".")
                qkv_parts.setdefault(f"{head}.attn.Wqkv.{param}", {})[proj] = value
                continue
        else:
            for old, new in _NATIVE_RENAMES[:1]:
                key = key.replace(old, new)
        out[key] = value
    for key, parts in qkv_parts.items():
        missing = {"q_proj", "k_proj", "v_proj"} - parts.keys()
        if missing:
            raise CheckpointError(f"checkpoint lacks {sorted(missing)} for {key}")
        out[key] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]], dim=0)
    return out


def load_converted(model: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Load ``state`` into ``model`` with a per-key shape check and a readable error (nanoGPT style)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise CheckpointError(f"weights of {what} do not match its config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=any(p.is_meta for p in model.parameters()))
