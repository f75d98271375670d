"""ModelSpec: the shape of a decoder-only transformer, read from a Hugging Face config.json,
a YAML with the same field names, or a preset; with parameter counts and memory footprints.

A config is read by its family (`model_type`, else `architectures`). Each family lists the
fields that change the cost and that momentsim models (`FAMILIES`); every other field must be
one known not to change it (`COST_NEUTRAL`: token ids, rope scaling, dropout, ...), or loading
stops with one line naming the field: an ignored field would be a silently wrong number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodels.errors import InputError, file_stamp, from_validation, load_mapping
from hwmodels.spec import DTYPE_BYTES

PRESET_DIR = Path(__file__).parent / "models"

# -- families: what a config's fields mean --------------------------------------------------------

_SHAPE = frozenset({
    "name", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "hidden_act", "tie_word_embeddings", "max_position_embeddings",
    "quantization_config",
})
_EXPERTS = frozenset({"num_local_experts", "num_experts_per_tok"})
_QWEN = frozenset({"sliding_window", "use_sliding_window", "max_window_layers", "layer_types"})
_QWEN_MOE = frozenset({"num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                       "mlp_only_layers"})
_DEEPSEEK = frozenset({"kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                       "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
                       "first_k_dense_replace", "moe_layer_freq", "attention_bias"})
_GEMMA = frozenset({"hidden_activation", "attention_bias"})


@dataclass(frozen=True)
class Family:
    """What a family's configs mean beyond their fields (as its Hugging Face modeling code has it)."""

    fields: frozenset[str]      # the cost-relevant config fields read
    act: str = "silu"           # hidden_act when the config does not say
    gated: bool = True          # gate and up projections (SwiGLU, GeGLU)
    qkv_bias: bool = False      # q, k and v always carry a bias (Qwen2), whatever attention_bias says
    qk_norm: str = ""           # over each head's q and k: "rms" with weights (Qwen3, Gemma 3), "l2" (Llama 4)
    norms: int = 2              # RMSNorms per layer (Gemma 2/3 also norm each sublayer's output)
    tied: bool = False          # tie_word_embeddings when the config does not say
    window_every: int = 0       # with a window: every n-th layer is full, the others slide (0: all slide)
    window_flag: bool = False   # windows only with use_sliding_window: true (Qwen)
    shared_expert: bool = False  # one shared expert of intermediate_size in each MoE layer (Llama 4)
    shared_gate: bool = False   # a sigmoid gate (hidden -> 1) on the shared expert (Qwen2-MoE)
    biases: bool = False        # experts and router carry biases, attention has sinks (gpt-oss)
    defaults: tuple[tuple[str, Any], ...] = ()  # the HF config class's values for fields a config may omit


FAMILIES: dict[str, Family] = {
    # no model_type or architectures: a Llama-like config written by hand
    "": Family(_SHAPE | _EXPERTS | {"attention_bias", "mlp_bias", "sliding_window"}),
    "llama": Family(_SHAPE | {"attention_bias", "mlp_bias"}),
    "mistral": Family(_SHAPE | {"sliding_window"}),
    "mixtral": Family(_SHAPE | _EXPERTS | {"sliding_window"}),
    "qwen2": Family(_SHAPE | _QWEN, qkv_bias=True, window_flag=True),
    "qwen2_moe": Family(_SHAPE | _QWEN | _QWEN_MOE | {"shared_expert_intermediate_size"}, qkv_bias=True,
                        window_flag=True, shared_gate=True),
    "qwen3": Family(_SHAPE | _QWEN | {"attention_bias"}, qk_norm="rms", window_flag=True),
    "qwen3_moe": Family(_SHAPE | _QWEN | _QWEN_MOE | {"attention_bias"}, qk_norm="rms", window_flag=True),
    "deepseek_v2": Family(_SHAPE | _DEEPSEEK),
    "deepseek_v3": Family(_SHAPE | _DEEPSEEK),
    "gemma": Family(_SHAPE | _GEMMA, act="gelu_pytorch_tanh", tied=True),
    "gemma2": Family(_SHAPE | _GEMMA | {"sliding_window", "layer_types"}, act="gelu_pytorch_tanh", norms=4,
                     tied=True, window_every=2),
    "gemma3_text": Family(_SHAPE | _GEMMA | {"sliding_window", "layer_types", "sliding_window_pattern"},
                          act="gelu_pytorch_tanh", qk_norm="rms", norms=4, tied=True, window_every=6,
                          defaults=(("vocab_size", 262208), ("head_dim", 256), ("sliding_window", 4096),
                                    ("max_position_embeddings", 131072))),
    "gpt_oss": Family(_SHAPE | _EXPERTS | {"experts_per_token", "sliding_window", "layer_types", "attention_bias"},
                      window_every=2, biases=True),
    "llama4_text": Family(_SHAPE | _EXPERTS | {"intermediate_size_mlp", "interleave_moe_layer_step", "moe_layers",
                                               "attention_chunk_size", "no_rope_layers", "use_qk_norm",
                                               "attention_bias"}, qk_norm="l2", shared_expert=True,
                          defaults=(("vocab_size", 202048), ("head_dim", 128), ("intermediate_size_mlp", 16384),
                                    ("attention_chunk_size", 8192), ("num_local_experts", 16),
                                    ("num_experts_per_tok", 1))),
    "phi3": Family(_SHAPE | {"sliding_window", "attention_bias"}),
}
WRAPPERS = {"gemma3": "gemma3_text", "llama4": "llama4_text"}  # multimodal: the text model is text_config
ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2", "Qwen2MoeForCausalLM": "qwen2_moe", "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe", "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3", "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text", "Gemma3ForConditionalGeneration": "gemma3",
    "GptOssForCausalLM": "gpt_oss", "Llama4ForCausalLM": "llama4_text",
    "Llama4ForConditionalGeneration": "llama4", "Phi3ForCausalLM": "phi3",
}

# Fields known not to change a serving step's cost in any family.
COST_NEUTRAL = frozenset({
    # bookkeeping
    "architectures", "model_type", "auto_map", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "return_dict", "output_attentions", "output_hidden_states", "torchscript", "is_encoder_decoder", "is_decoder",
    "add_cross_attention", "tie_encoder_decoder", "pruned_heads", "chunk_size_feed_forward", "problem_type",
    "id2label", "label2id", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
    "cross_attention_hidden_size", "tf_legacy_loss", "use_bfloat16", "pretraining_tp", "initializer_range",
    "initializer_factor", "cache_implementation",
    # token ids
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "image_token_index", "image_token_id", "boi_token_index", "eoi_token_index",
    # generation defaults
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    # training only
    "attention_dropout", "hidden_dropout", "embd_pdrop", "resid_pdrop", "dropout", "router_aux_loss_coef",
    "router_z_loss_coef", "router_jitter_noise", "output_router_logits", "aux_loss_alpha", "seq_aux",
    # numerics inside kernels that do the same work either way
    "rms_norm_eps", "layer_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "rope_local_base_freq",
    "original_max_position_embeddings", "initial_context_length", "query_pre_attn_scalar",
    "attn_logit_softcapping", "final_logit_softcapping", "swiglu_limit", "attn_temperature_tuning",
    "floor_scale", "attn_scale", "norm_topk_prob", "routed_scaling_factor", "scoring_func", "topk_method",
    "n_group", "topk_group",
    # parts a server does not run by default: DeepSeek's multi-token-prediction layer (speculative
    # decoding only) and its training-time expert-parallel size
    "num_nextn_predict_layers", "ep_size",
    # multimodal wrappers: momentsim costs the text model (the vision encoder runs per image, not per token)
    "vision_config", "mm_tokens_per_image", "vision_feature_layer", "vision_feature_select_strategy",
    "projector_hidden_act", "multi_modal_projector_bias",
})


def family_of(data: dict[str, Any]) -> str:
    """The family key of a config mapping: its model_type, else its architecture, else '' (generic)."""
    mt = data.get("model_type")
    if isinstance(mt, str) and mt:
        return mt
    arch = data.get("architectures")
    if isinstance(arch, list) and arch and isinstance(arch[0], str):
        return ARCHITECTURES.get(arch[0], arch[0])
    return ""


class Quantization(BaseModel):
    """A checkpoint's `quantization_config`: the format its weights are stored in."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True, allow_inf_nan=False)

    quant_method: str
    bits: int | None = Field(default=None, ge=1, le=64, validation_alias=AliasChoices("bits", "w_bit"))
    weight_block_size: list[Annotated[int, Field(ge=1, le=1_000_000)]] | None = None
    quant_algo: str | None = None

    @model_validator(mode="after")
    def _known(self) -> Quantization:
        self.formats(moe=False)
        return self

    def formats(self, moe: bool) -> tuple[str, str]:
        """(dense linear layers, routed experts) weight formats, or ValueError naming the field."""
        m = self.quant_method.lower()
        if m == "fp8":
            f = "fp8-block" if self.weight_block_size else "fp8"
            return f, f
        if m == "mxfp4":  # gpt-oss: experts in MXFP4, attention and router in bf16
            return ("bf16", "mxfp4") if moe else ("mxfp4", "mxfp4")
        if m in ("awq", "gptq"):
            if self.bits == 4:
                return f"int4-{m}", f"int4-{m}"
            if self.bits == 8 and m == "gptq":
                return "int8", "int8"
            raise ValueError(f"bits {self.bits} is not modelled for {m}; allowed: 4"
                             + (", 8" if m == "gptq" else ""))
        if m == "modelopt":
            algo = (self.quant_algo or "").upper()
            if algo in ("NVFP4", "FP8"):
                f = "nvfp4" if algo == "NVFP4" else "fp8"
                return f, f
            raise ValueError(f"quant_algo {self.quant_algo!r} is not modelled; allowed: "
                             "NVFP4, FP8")
        raise ValueError(f"quant_method {self.quant_method!r} is not modelled; allowed: awq, "
                         "fp8, gptq, modelopt, mxfp4 (or set the weight dtype of the run)")


AttnKind = Literal["full_attention", "sliding_attention", "chunked_attention"]
# Physical bounds of a config's numbers: far above any model built, far below what overflows.
WIDTH = 10_000_000       # hidden, intermediate, head and rank sizes; head counts
LAYERS = 1024            # per-layer layouts are built from the layer count
EXPERTS = 100_000
TOKENS = 1_000_000_000   # context lengths and windows
Layer = Annotated[int, Field(ge=0, lt=LAYERS)]  # a layer index


class ModelSpec(BaseModel):
    """Hugging Face field names, so a config.json validates as it is (`_spec` checks the fields
    against the family first; fields known to be cost-neutral are dropped here)."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, strict=True, allow_inf_nan=False)

    name: str = "custom"
    model_type: str = ""
    architectures: list[str] = Field(default_factory=list)
    hidden_size: int = Field(gt=0, le=WIDTH)
    num_hidden_layers: int = Field(gt=0, le=LAYERS, description="layers (the largest models have ~130; per-layer "
                                   "layouts are built from it)")
    num_attention_heads: int = Field(gt=0, le=WIDTH)
    num_key_value_heads: int | None = Field(default=None, gt=0, le=WIDTH)
    intermediate_size: int = Field(gt=0, le=WIDTH)
    vocab_size: int = Field(gt=0, le=100_000_000)
    head_dim: int | None = Field(default=None, gt=0, le=WIDTH)
    tie_word_embeddings: bool | None = None
    hidden_act: str | None = Field(default=None, validation_alias=AliasChoices("hidden_activation", "hidden_act"))
    attention_bias: bool = False
    mlp_bias: bool = False
    max_position_embeddings: int | None = Field(
        default=None, gt=0, le=TOKENS,
        description="longest sequence (prompt + output) the model serves; longer requests are rejected "
        "as a server rejects them; None: not enforced",
    )
    # attention windows
    sliding_window: int | None = Field(default=None, gt=0, le=TOKENS)
    use_sliding_window: bool | None = None
    max_window_layers: int | None = Field(default=None, ge=0, le=LAYERS)
    sliding_window_pattern: int | None = Field(default=None, ge=1, le=LAYERS)
    layer_types: list[AttnKind] | None = None
    attention_chunk_size: int | None = Field(default=None, gt=0, le=TOKENS)
    no_rope_layers: list[Annotated[int, Field(ge=0, le=1)]] | None = None
    use_qk_norm: bool | None = None
    # mixture of experts
    num_local_experts: int = Field(default=1, ge=1, le=EXPERTS, validation_alias=AliasChoices(
        "num_local_experts", "num_experts", "n_routed_experts"))
    num_experts_per_tok: int = Field(default=1, ge=1, le=EXPERTS, validation_alias=AliasChoices(
        "num_experts_per_tok", "experts_per_token"))
    moe_intermediate_size: int | None = Field(default=None, gt=0, le=WIDTH)
    intermediate_size_mlp: int | None = Field(default=None, gt=0, le=WIDTH)
    n_shared_experts: int | None = Field(default=None, ge=0, le=EXPERTS)
    shared_expert_intermediate_size: int | None = Field(default=None, ge=0, le=WIDTH)
    first_k_dense_replace: int = Field(default=0, ge=0, le=LAYERS)
    moe_layer_freq: int = Field(default=1, ge=1, le=LAYERS)
    decoder_sparse_step: int = Field(default=1, ge=1, le=LAYERS)
    mlp_only_layers: list[Layer] = Field(default_factory=list)
    interleave_moe_layer_step: int = Field(default=1, ge=1, le=LAYERS)
    moe_layers: list[Layer] | None = None
    # multi-head latent attention (DeepSeek-V2/V3)
    kv_lora_rank: int | None = Field(default=None, gt=0, le=WIDTH)
    q_lora_rank: int | None = Field(default=None, gt=0, le=WIDTH)
    qk_nope_head_dim: int | None = Field(default=None, gt=0, le=WIDTH)
    qk_rope_head_dim: int | None = Field(default=None, gt=0, le=WIDTH)
    v_head_dim: int | None = Field(default=None, gt=0, le=WIDTH)
    quantization_config: Quantization | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.kv_heads})"
            )
        if self.num_experts_per_tok > self.num_local_experts:
            raise ValueError(f"num_experts_per_tok ({self.num_experts_per_tok}) must be <= the number of routed "
                             f"experts ({self.num_local_experts})")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads}), or give head_dim")
        if self.kv_lora_rank is not None:
            for f in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, f) is None:
                    raise ValueError(f"{f} is required with kv_lora_rank (multi-head latent attention)")
        L = self.num_hidden_layers
        for f in ("layer_types", "no_rope_layers"):
            v = getattr(self, f)
            if v and len(v) != L:
                raise ValueError(f"{f} has {len(v)} entries for {L} layers")
        kinds = self.layer_kinds
        if "sliding_attention" in kinds and not self.sliding_window:
            raise ValueError("sliding_attention layers need sliding_window")
        if "chunked_attention" in kinds and not self.attention_chunk_size:
            raise ValueError("chunked_attention layers need attention_chunk_size")
        return self

    # -- family -----------------------------------------------------------------------------------
    @property
    def family(self) -> Family:
        return FAMILIES.get(family_of({"model_type": self.model_type, "architectures": self.architectures}),
                            FAMILIES[""])

    @property
    def act(self) -> str:
        return self.hidden_act or self.family.act

    @property
    def tied(self) -> bool:
        return self.family.tied if self.tie_word_embeddings is None else self.tie_word_embeddings

    # -- attention shape ----------------------------------------------------------------------------
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
    def is_mla(self) -> bool:
        """Multi-head latent attention: the KV cache holds a compressed latent per token."""
        return self.kv_lora_rank is not None

    @property
    def o_dim(self) -> int:
        """Input width of o_proj: the heads' outputs."""
        return self.num_attention_heads * self.v_head_dim if self.is_mla else self.q_dim

    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias or self.family.qkv_bias

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """Each layer's attention: full, sliding (a window of sliding_window keys) or chunked (Llama 4:
        within blocks of attention_chunk_size), as the family's modeling code lays them out."""
        L, fam = self.num_hidden_layers, self.family
        if self.layer_types:
            return tuple(self.layer_types)
        if self.attention_chunk_size:  # Llama 4: RoPE layers are chunked, every 4th (NoPE) layer is full
            rope = self.no_rope_layers or [int((i + 1) % 4 != 0) for i in range(L)]
            return tuple("chunked_attention" if r else "full_attention" for r in rope)
        if not self.sliding_window or (fam.window_flag and not self.use_sliding_window):
            return ("full_attention",) * L
        if fam.window_flag:  # Qwen: the layers from max_window_layers on slide
            first = self.max_window_layers if self.max_window_layers is not None else 28  # HF's default
            return tuple("sliding_attention" if i >= first else "full_attention" for i in range(L))
        every = self.sliding_window_pattern or fam.window_every
        return tuple("full_attention" if every and (i + 1) % every == 0 else "sliding_attention" for i in range(L))

    @property
    def attention_groups(self) -> tuple[tuple[str, int | None, int], ...]:
        """(kind, window or chunk size, layers) of the model's attention layers grouped by kind:
        ("full", None, n), ("sliding", W, n): a query sees the W latest keys, ("chunked", C, n): a
        query sees the keys of its own C-token chunk so far (Llama 4)."""
        count: dict[tuple[str, int | None], int] = {}
        for k in self.layer_kinds:
            key = ("full", None) if k == "full_attention" else (
                ("sliding", self.sliding_window) if k == "sliding_attention" else ("chunked", self.attention_chunk_size))
            count[key] = count.get(key, 0) + 1
        order = {"full": 0, "sliding": 1, "chunked": 2}
        return tuple((k, w, n) for (k, w), n in sorted(count.items(), key=lambda kv: order[kv[0][0]]))

    @property
    def qk_norm_layers(self) -> int:
        """Layers that normalise each head's q and k: every layer of Qwen3 and Gemma 3, Llama 4's
        RoPE (chunked) layers unless use_qk_norm is false."""
        if self.family.qk_norm == "rms":
            return self.num_hidden_layers
        if self.family.qk_norm == "l2" and self.use_qk_norm is not False:
            return sum(k == "chunked_attention" for k in self.layer_kinds)
        return 0

    # -- feed-forward shape ----------------------------------------------------------------------------
    @property
    def gated(self) -> bool:
        """Gate and up projections: every known family; a generic config unless its activation is plain."""
        if self.family is not FAMILIES[""]:
            return self.family.gated
        return self.act in ("silu", "swish", "swiglu", "gelu_pytorch_tanh_gated") or self.is_moe

    @property
    def is_moe(self) -> bool:
        return self.num_local_experts > 1

    @property
    def moe_layer_flags(self) -> tuple[bool, ...]:
        """Which layers route to experts (DeepSeek's first_k_dense_replace and moe_layer_freq, Qwen's
        decoder_sparse_step and mlp_only_layers, Llama 4's interleave_moe_layer_step/moe_layers)."""
        L = self.num_hidden_layers
        if not self.is_moe:
            return (False,) * L
        if self.moe_layers is not None:
            chosen = set(self.moe_layers)
            return tuple(i in chosen for i in range(L))
        dense = set(self.mlp_only_layers)
        return tuple(i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0
                     and (i + 1) % self.decoder_sparse_step == 0 and (i + 1) % self.interleave_moe_layer_step == 0
                     and i not in dense for i in range(L))

    @property
    def moe_layer_count(self) -> int:
        return sum(self.moe_layer_flags)

    @property
    def dense_layer_count(self) -> int:
        return self.num_hidden_layers - self.moe_layer_count

    @property
    def expert_intermediate(self) -> int:
        """Width of one routed expert."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def dense_intermediate(self) -> int:
        """Width of a dense layer's MLP (Llama 4: intermediate_size_mlp)."""
        return self.intermediate_size_mlp or self.intermediate_size

    @property
    def shared_intermediate(self) -> int:
        """Width of the shared experts of a MoE layer, together (0: none)."""
        if not self.is_moe:
            return 0
        if self.n_shared_experts:
            return self.n_shared_experts * self.expert_intermediate
        if self.shared_expert_intermediate_size:
            return self.shared_expert_intermediate_size
        return self.intermediate_size if self.family.shared_expert else 0

    @property
    def native_formats(self) -> tuple[str, str]:
        """(dense linear layers, routed experts) weight formats of the checkpoint: bf16 unless a
        quantization_config says otherwise."""
        q = self.quantization_config
        return q.formats(self.is_moe) if q is not None else ("bf16", "bf16")

    # -- parameter counts -------------------------------------------------------------------------------
    def attn_linear_params(self) -> tuple[int, int]:
        """One layer's attention matrices: (split over tp by heads, replicated on every device)."""
        h, heads = self.hidden_size, self.num_attention_heads
        if self.is_mla:
            qk = self.qk_nope_head_dim + self.qk_rope_head_dim
            r, rope = self.kv_lora_rank, self.qk_rope_head_dim
            q_a = h * self.q_lora_rank if self.q_lora_rank else 0
            q_b = (self.q_lora_rank or h) * heads * qk
            kv_b = r * heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q_b + kv_b + self.o_dim * h, q_a + h * (r + rope)
        return h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h, 0

    def attn_params(self) -> int:
        """One layer's attention: matrices, biases, q/k norms, MLA's latent norms, sinks."""
        p = sum(self.attn_linear_params())
        if self.is_mla:
            p += (self.q_lora_rank or 0) + self.kv_lora_rank
        elif self.qkv_bias:
            p += self.q_dim + 2 * self.kv_dim
        if self.attention_bias:
            p += self.hidden_size  # o_proj's bias
        if self.family.qk_norm == "rms":
            p += 2 * self.hd  # the norms' weights (Llama 4's L2 norm has none)
        if self.family.biases:
            p += self.num_attention_heads  # attention sinks: one logit per head
        return p

    def mlp_params(self, width: int) -> int:
        """A (gated) MLP of this width with its biases."""
        h = self.hidden_size
        if self.gated:
            return 3 * h * width + ((2 * width + h) if self.mlp_bias else 0)
        return 2 * h * width + ((width + h) if self.mlp_bias else 0)

    def expert_params(self) -> int:
        """One routed expert (the dense MLP for a dense model)."""
        if not self.is_moe:
            return self.mlp_params(self.dense_intermediate)
        i = self.expert_intermediate
        return 3 * self.hidden_size * i + ((2 * i + self.hidden_size) if self.family.biases else 0)

    def moe_extra_params(self) -> int:
        """A MoE layer's router and shared experts."""
        h, E = self.hidden_size, self.num_local_experts
        router = h * E + (E if self.family.biases else 0)
        shared = 3 * h * self.shared_intermediate + (h if self.family.shared_gate and self.shared_intermediate else 0)
        return router + shared

    def norm_params(self) -> int:
        return self.family.norms * self.hidden_size

    def layer_params(self, active: bool = False) -> int:
        """One layer of the model's main kind (MoE layers in a MoE model)."""
        base = self.attn_params() + self.norm_params()
        if not self.is_moe:
            return base + self.mlp_params(self.dense_intermediate)
        experts = self.num_experts_per_tok if active else self.num_local_experts
        return base + experts * self.expert_params() + self.moe_extra_params()

    def embedding_params(self) -> int:
        e = self.vocab_size * self.hidden_size
        return e if self.tied else 2 * e

    def num_params(self, active: bool = False) -> int:
        """All weights (active=True: those one token uses: the routed experts it picks, not the others)."""
        dense = self.dense_layer_count * (self.attn_params() + self.norm_params() + self.mlp_params(self.dense_intermediate))
        moe = self.moe_layer_count * self.layer_params(active) if self.is_moe else 0
        return dense + moe + self.embedding_params() + self.hidden_size

    # -- memory ---------------------------------------------------------------------------------------
    def weight_bytes(self, weight_dtype: str = "bf16", tp: int = 1, pp: int = 1, ep: int = 1,
                     expert_dtype: str | None = None) -> float:
        """Bytes of weights on one device. Linear layers are stored in `weight_dtype` (routed experts
        in `expert_dtype`, default the same), split over tp (MLA's q_a/kv_a projections are
        replicated; with ep > 1 so are the shared experts); norms, biases, routers and embeddings
        stay in 16 bits when the rest is quantised. pp splits the layers evenly."""
        wb = DTYPE_BYTES[weight_dtype]
        xb = DTYPE_BYTES[expert_dtype or weight_dtype]
        hi = 4.0 if weight_dtype == "fp32" else max(wb, 2.0)
        sharded, replicated = self.attn_linear_params()
        L, Lm = self.num_hidden_layers, self.moe_layer_count
        lin_tp = L * sharded + self.dense_layer_count * self.mlp_linear(self.dense_intermediate)
        lin_rep = L * replicated
        shared = Lm * 3 * self.hidden_size * self.shared_intermediate
        if ep > 1:
            lin_rep += shared
        else:
            lin_tp += shared
        experts = Lm * self.num_local_experts * 3 * self.hidden_size * self.expert_intermediate
        small = self.num_params() - lin_tp - lin_rep - experts - self.embedding_params()
        per_device = (lin_tp * wb + experts * xb + (small + self.embedding_params()) * hi) / tp + lin_rep * wb
        return per_device / pp

    def mlp_linear(self, width: int) -> int:
        return (3 if self.gated else 2) * self.hidden_size * width

    def kv_bytes_per_token(self, kv_dtype: str = "bf16", tp: int = 1, pp: int = 1) -> float:
        """The KV cache of one token on one device, every layer (sliding layers too: a server without
        a per-layer-window cache manager keeps them). Standard attention: K and V per KV head, heads
        sharded over tp (at least one per device). MLA: the compressed latent and the shared rope
        key, kv_lora_rank + qk_rope_head_dim values, the same on every tp device."""
        layers = self.num_hidden_layers / pp
        if self.is_mla:
            return layers * (self.kv_lora_rank + self.qk_rope_head_dim) * DTYPE_BYTES[kv_dtype]
        kv_heads = max(1, math.ceil(self.kv_heads / tp)) if tp <= self.kv_heads else 1
        return 2 * layers * kv_heads * self.hd * DTYPE_BYTES[kv_dtype]


# -- loading -------------------------------------------------------------------------------------------

_ALIASES = {"num_experts": "num_local_experts", "n_routed_experts": "num_local_experts",
            "experts_per_token": "num_experts_per_tok"}


def _unset(key: Any, value: Any) -> bool:
    """A ModelSpec field at its default (null, 0, [] ...) says nothing: a dumped ModelSpec reloads."""
    f = ModelSpec.model_fields.get(key) if isinstance(key, str) else None
    return f is not None and not f.is_required() and f.get_default(call_default_factory=True) == value


def _check_fields(data: dict[str, Any], fam: str, where: str) -> None:
    """Every field is modelled for its family or known to be cost-neutral; aliases agree."""
    known = FAMILIES[fam].fields
    known = known | {canon for alias, canon in _ALIASES.items() if alias in known}  # a dumped ModelSpec's names
    for key in data:
        if key not in known and key not in COST_NEUTRAL and not _unset(key, data[key]):
            raise InputError(where, str(key), f"not modelled for model_type {fam or '(none: Llama-like)'} and may "
                             "change the cost; allowed: the fields listed for it in simulator/moment/model.py")
    for alias, canon in _ALIASES.items():
        if alias in data and canon in data and data[alias] != data[canon]:
            raise InputError(where, alias, f"{data[alias]!r} disagrees with {canon} ({data[canon]!r})")


def _spec(data: dict[str, Any], name: str, where: str) -> ModelSpec:
    if not isinstance(data, dict):
        raise InputError(where, "", "must be a mapping of Hugging Face config fields")
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("_"))}
    if "text_config" in data:  # a multimodal wrapper (Gemma 3, Llama 4): the text model serves tokens
        text = data.pop("text_config")
        if not isinstance(text, dict):
            raise InputError(where, "text_config", "must be a mapping of the text model's config fields")
        outer = family_of(data)
        for key in data:
            if key not in COST_NEUTRAL and key not in ("quantization_config", "tie_word_embeddings"):
                raise InputError(where, str(key), "not modelled beside a text_config and may change the cost")
        top = {k: data[k] for k in ("architectures", "quantization_config", "tie_word_embeddings") if k in data}
        data = {k: v for k, v in text.items() if not (isinstance(k, str) and k.startswith("_"))} | top
        if not isinstance(data.get("model_type"), str) or not data.get("model_type"):
            data["model_type"] = WRAPPERS.get(outer, outer)
    fam = family_of(data)
    fam = WRAPPERS.get(fam, fam)
    if fam not in FAMILIES:
        field = "model_type" if data.get("model_type") else "architectures"
        known = ", ".join(sorted(k for k in FAMILIES if k))
        raise InputError(where, field, f"{fam!r} is not a model family momentsim models; known model_type: {known}")
    _check_fields(data, fam, where)
    data = {k: v for k, v in data.items() if k not in COST_NEUTRAL or k in ("architectures", "model_type")}
    data["model_type"] = fam
    for key, value in FAMILIES[fam].defaults:  # multimodal text_configs often leave these to the class
        data.setdefault(key, value)
    data.setdefault("name", name)
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, where) from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_model(arg: str) -> ModelSpec:
    """A preset name or a path to config.json / YAML (a file edited since the last call is read
    again)."""
    return _load_model(arg, file_stamp(arg))


@lru_cache(maxsize=128)
def _load_model(arg: str, _stamp: tuple[int, int] | None) -> ModelSpec:
    p = Path(arg)
    if (PRESET_DIR / f"{arg}.json").exists() and not p.exists():
        return _spec(load_mapping(PRESET_DIR / f"{arg}.json"), arg, f"model preset {arg}")
    if p.suffix in (".json", ".yaml", ".yml") or p.exists():
        return _spec(load_mapping(p), p.stem if p.name != "config.json" else p.parent.name or "custom", str(p))
    raise InputError("model", "", f"unknown model {arg!r}; known presets: {', '.join(preset_names())} (or a path to config.json)")
