"""ModelSpec: the shape of a decoder-only transformer, read from a Hugging Face config.json,
a YAML with the same field names, or a preset; with parameter counts and memory footprints."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodels.errors import InputError, from_validation, load_mapping
from hwmodels.spec import DTYPE_BYTES

PRESET_DIR = Path(__file__).parent / "models"


class ModelSpec(BaseModel):
    """Hugging Face field names, so a config.json validates as it is (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)

    name: str = "custom"
    hidden_size: int = Field(gt=0, le=1_000_000)
    num_hidden_layers: int = Field(gt=0, le=100_000)
    num_attention_heads: int = Field(gt=0, le=100_000)
    num_key_value_heads: int | None = Field(default=None, gt=0, le=100_000)
    intermediate_size: int = Field(gt=0, le=10_000_000)
    vocab_size: int = Field(gt=0, le=100_000_000)
    head_dim: int | None = Field(default=None, gt=0, le=100_000)
    num_local_experts: int = Field(default=1, ge=1, le=100_000)
    num_experts_per_tok: int = Field(default=1, ge=1, le=100_000)
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = Field(default=None, gt=0, le=1_000_000_000)
    max_position_embeddings: int | None = Field(
        default=None, gt=0, le=1_000_000_000,
        description="longest sequence (prompt + output) the model serves; longer requests are rejected "
        "as a server rejects them; None: not enforced",
    )
    architectures: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.kv_heads})"
            )
        if self.num_experts_per_tok > self.num_local_experts:
            raise ValueError("num_experts_per_tok must be <= num_local_experts")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads}), or give head_dim"
            )
        return self

    # -- derived shape -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.hd

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.hd

    @property
    def gated(self) -> bool:
        """Llama-style SwiGLU (gate and up) unless the activation says plain GELU/ReLU."""
        return self.hidden_act in ("silu", "swish", "swiglu", "gelu_pytorch_tanh_gated") or self.is_moe

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 1

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or any("Qwen2" in a for a in self.architectures)

    # -- parameter counts ------------------------------------------------------------------------
    def attn_params(self) -> int:
        h = self.hidden_size
        p = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        if self.qkv_bias:
            p += self.q_dim + 2 * self.kv_dim
        return p

    def expert_params(self) -> int:
        """One expert's MLP (or the dense MLP)."""
        h, i = self.hidden_size, self.intermediate_size
        return (3 if self.gated else 2) * h * i + ((2 * i + h) if self.mlp_bias else 0)

    def layer_params(self, active: bool = False) -> int:
        experts = self.num_experts_per_tok if active else self.num_local_experts
        router = self.hidden_size * self.num_local_experts if self.is_moe else 0
        return self.attn_params() + experts * self.expert_params() + router + 2 * self.hidden_size

    def embedding_params(self) -> int:
        e = self.vocab_size * self.hidden_size
        return e if self.tie_word_embeddings else 2 * e

    def num_params(self, active: bool = False) -> int:
        """All weights (active=True: those one token uses, for MoE)."""
        return self.num_hidden_layers * self.layer_params(active) + self.embedding_params() + self.hidden_size

    # -- memory --------------------------------------------------------------------------------
    def weight_bytes(self, weight_dtype: str = "bf16", tp: int = 1, pp: int = 1) -> float:
        """Bytes of weights on one device; norms and embeddings stay in 16 bits when quantised."""
        wb = DTYPE_BYTES[weight_dtype]
        hi = max(wb, 2.0) if weight_dtype != "fp32" else 4.0
        layers = self.num_hidden_layers * (self.layer_params() - 2 * self.hidden_size) * wb
        other = (self.embedding_params() * hi) + (2 * self.num_hidden_layers + 1) * self.hidden_size * hi
        return layers / (tp * pp) + other / (tp * pp)

    def kv_bytes_per_token(self, kv_dtype: str = "bf16", tp: int = 1, pp: int = 1) -> float:
        """K and V of every layer for one token, on one device (KV heads shard over tp, at least 1)."""
        kv_heads = max(1, math.ceil(self.kv_heads / tp)) if tp <= self.kv_heads else 1
        layers = self.num_hidden_layers / pp
        return 2 * layers * kv_heads * self.hd * DTYPE_BYTES[kv_dtype]


def _spec(data: dict[str, Any], name: str, where: str) -> ModelSpec:
    if not isinstance(data, dict):
        raise InputError(where, "", "must be a mapping of Hugging Face config fields")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    if "text_config" in data and isinstance(data["text_config"], dict):
        data = {**data["text_config"], "architectures": data.get("architectures", [])}
    data.setdefault("name", name)
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, where) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


@lru_cache(maxsize=128)
def load_model(arg: str) -> ModelSpec:
    """A preset name or a path to config.json / YAML."""
    p = Path(arg)
    if (PRESET_DIR / f"{arg}.json").exists() and not p.exists():
        return _spec(load_mapping(PRESET_DIR / f"{arg}.json"), arg, f"model preset {arg}")
    if p.suffix in (".json", ".yaml", ".yml") or p.exists():
        return _spec(load_mapping(p), p.stem if p.name != "config.json" else p.parent.name or "custom", str(p))
    raise InputError("model", "", f"unknown model {arg!r}; known presets: {', '.join(preset_names())} (or a path to config.json)")
