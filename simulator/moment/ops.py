"""The operations of one forward pass (one moment), hardware-free.

A step is described by aggregates of its batch, so the engine can cost a step in O(1):
`tokens` new tokens in all; decode sequences with the sum of their contexts; prefill chunks
with the sum of their attention pairs. Every count is per device after tensor-parallel
sharding and for all layers of one pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwmodels.spec import DTYPE_BYTES
from simulator.moment.model import ModelSpec

CATEGORIES = (
    "embed", "norm", "qkv_proj", "rope", "attention", "o_proj", "ffn_up", "ffn_act",
    "ffn_down", "residual_add", "lm_head", "comm", "host",
)

# Kernels per layer that plain eager PyTorch launches for each category (the reference
# decoder in calibration/reference.py, counted with torch.profiler in tests/test_validate.py):
# RMSNorm as in Hugging Face (to fp32, pow, mean, add, rsqrt, mul, to dtype, mul weight); RoPE
# as rotate_half on q and k; attention = 2 KV-cache writes + SDPA (its output is already in the
# layout o_proj reads); SiLU and mul for the gated activation; per step: positions and the RoPE
# cos/sin rows, argmax and the copy of the tokens to the host.
EAGER_KERNELS = {
    "embed": 1, "norm": 8, "qkv_proj": 1, "rope": 10, "attention": 3, "o_proj": 1,
    "ffn_up": 1, "ffn_act": 2, "ffn_down": 1, "residual_add": 1, "lm_head": 2, "comm": 1,
    "sample": 2, "step_inputs": 3, "moe_router": 6,
}


@dataclass(frozen=True)
class Batch:
    """One step's batch as aggregates. Prefill pairs = sum over chunks of l*c + l*(l+1)/2
    (the causal query-key pairs of a chunk of l new tokens after c cached ones)."""

    decode_seqs: int = 0
    decode_ctx: int = 0          # sum of cached tokens over decode sequences
    prefill_seqs: int = 0
    prefill_tokens: int = 0      # new tokens in prefill chunks
    prefill_pairs: float = 0.0
    prefill_ctx: int = 0         # sum of cached tokens before each chunk
    logits: int | None = None    # rows through lm_head; default decode + prefill seqs

    @property
    def tokens(self) -> int:
        return self.decode_seqs + self.prefill_tokens

    @property
    def logit_rows(self) -> int:
        return self.decode_seqs + self.prefill_seqs if self.logits is None else self.logits

    @staticmethod
    def of(decode: list[tuple[int, int]] = (), prefill: list[tuple[int, int]] = ()) -> Batch:
        """decode: (seqs, context) groups; prefill: (seqs, prompt length) groups, nothing cached."""
        ds = sum(b for b, _ in decode)
        dc = sum(b * c for b, c in decode)
        ps = sum(b for b, _ in prefill)
        pt = sum(b * n for b, n in prefill)
        pp = sum(b * n * (n + 1) / 2 for b, n in prefill)
        return Batch(ds, dc, ps, pt, pp, 0)


Num = float | np.ndarray  # a count, or counts over an array of token counts


@dataclass(frozen=True)
class Op:
    """One kind of kernel in a step. m may be an array (vectorised over token counts)."""

    name: str
    category: str
    kind: str                 # gemm | attn_prefill | attn_decode | stream | allreduce | send
    flops: Num                # per device, all layers
    bytes: Num                # read + written, per device, all layers
    layers: int               # how many times it runs in the step (per-kernel floors, dispatches)
    m: Num = 0.0              # GEMM rows / element-wise rows (tokens)
    n: float = 0.0            # GEMM columns per device
    k: float = 0.0            # GEMM reduction dim per device
    copies: Num = 1.0         # distinct weight matrices streamed (MoE experts touched)
    seqs: Num = 0.0           # sequences in an attention kernel
    kernels: int = 1          # eager kernel launches per layer
    elems: Num = 0.0          # elements per layer (element-wise: of the tensor; GEMM: of the output);
                              # simulator/moment/kernels.py prices each implementation's kernels by them


@dataclass(frozen=True)
class Dtypes:
    weight: str = "bf16"
    act: str = "bf16"
    kv: str = "bf16"

    @property
    def compute(self) -> str:
        """The tensor-core dtype of the GEMMs: fp8 weights run fp8 GEMMs; int weights dequantise."""
        return "fp8" if self.weight == "fp8" else self.act


def check_tp(model: ModelSpec, tp: int, pp: int = 1) -> None:
    if tp < 1 or model.num_attention_heads % tp:
        raise ValueError(f"tp={tp} must divide num_attention_heads={model.num_attention_heads}")
    if tp > model.kv_heads and tp % model.kv_heads:
        raise ValueError(f"tp={tp} must divide or be a multiple of num_key_value_heads={model.kv_heads}")
    if tp <= model.kv_heads and model.kv_heads % tp:
        raise ValueError(f"tp={tp} must divide num_key_value_heads={model.kv_heads}")
    if pp < 1 or model.num_hidden_layers % pp:
        raise ValueError(f"pp={pp} must divide num_hidden_layers={model.num_hidden_layers}")


def dense_ops(model: ModelSpec, tokens: Num, logits: Num, dt: Dtypes, tp: int = 1, pp: int = 1) -> list[Op]:
    """Ops whose cost depends only on the token count (GEMMs, element-wise, collectives).

    A moment is one batch through all pipeline stages, so every layer is counted once (on the
    device of its stage) plus the pp - 1 sends between stages. `tokens` and `logits` may be
    numpy arrays: the result then holds arrays of the same shape.
    """
    t = np.asarray(tokens, dtype=float)
    lg = np.asarray(logits, dtype=float)
    L = model.num_hidden_layers
    h = model.hidden_size
    a = DTYPE_BYTES[dt.act]
    w = DTYPE_BYTES[dt.weight]
    q = model.q_dim / tp
    kv = max(model.kv_dim / tp, model.hd)
    inter = model.intermediate_size / tp
    ops: list[Op] = []

    def gemm(name: str, cat: str, m: Num, n: float, k: float, layers: int, copies: Num = 1.0,
             kernels: int = 1) -> Op:
        m = np.asarray(m, dtype=float)
        fl = 2.0 * m * n * k * layers
        by = (w * n * k * np.asarray(copies) + a * m * (n + k)) * layers
        return Op(name, cat, "gemm", fl, by, layers, m, n, k, copies, 0.0, kernels, m * n)

    def stream(name: str, cat: str, elems: Num, reads: float, writes: float, layers: int,
               flops_per_elem: float = 1.0, kernels: int = 1, rows: Num | None = None) -> Op:
        """An element-wise kernel over `rows` tokens (one thread block each on a GPU)."""
        e = np.asarray(elems, dtype=float)
        return Op(name, cat, "stream", flops_per_elem * e * layers, (reads + writes) * a * e * layers, layers,
                  m=t if rows is None else rows, kernels=kernels, elems=e)

    ops.append(stream("embed", "embed", t * h, 1, 1, 1, 0.0, EAGER_KERNELS["embed"]))
    ops.append(stream("input_norm", "norm", t * h, 1, 1, L, 4.0, EAGER_KERNELS["norm"]))
    ops.append(gemm("qkv_proj", "qkv_proj", t, q + 2 * kv, h, L))
    if model.qkv_bias:
        ops.append(stream("qkv_bias", "qkv_proj", t * (q + 2 * kv), 1, 1, L, 1.0))
    ops.append(stream("rope", "rope", t * (q + kv), 1, 1, L, 6.0, EAGER_KERNELS["rope"]))
    ops.append(gemm("o_proj", "o_proj", t, h, q, L))
    if tp > 1:
        ops.append(Op("attn_allreduce", "comm", "allreduce", 0.0, t * h * a * L, L, t, kernels=1))
    ops.append(stream("attn_residual", "residual_add", t * h, 2, 1, L, 1.0, EAGER_KERNELS["residual_add"]))
    ops.append(stream("post_attn_norm", "norm", t * h, 1, 1, L, 4.0, EAGER_KERNELS["norm"]))
    if model.is_moe:
        E, k_ = model.num_local_experts, model.num_experts_per_tok
        ops.append(gemm("router", "ffn_up", t, E, h, L, kernels=EAGER_KERNELS["moe_router"]))
        touched = E * (1.0 - (1.0 - k_ / E) ** np.maximum(t, 1.0))  # experts hit by t tokens
        ops.append(gemm("experts_up", "ffn_up", t * k_, 2 * inter, h, L, copies=touched))
        ops.append(stream("experts_act", "ffn_act", t * k_ * inter, 2, 1, L, 4.0, EAGER_KERNELS["ffn_act"],
                          rows=t * k_))
        ops.append(gemm("experts_down", "ffn_down", t * k_, h, inter, L, copies=touched))
    else:
        up = 2 * inter if model.gated else inter
        ops.append(gemm("ffn_up", "ffn_up", t, up, h, L))
        ops.append(stream("ffn_act", "ffn_act", t * inter, 2 if model.gated else 1, 1, L, 4.0,
                          EAGER_KERNELS["ffn_act"] if model.gated else 1))
        ops.append(gemm("ffn_down", "ffn_down", t, h, inter, L))
    if tp > 1:
        ops.append(Op("ffn_allreduce", "comm", "allreduce", 0.0, t * h * a * L, L, t, kernels=1))
    ops.append(stream("ffn_residual", "residual_add", t * h, 2, 1, L, 1.0, EAGER_KERNELS["residual_add"]))
    ops.append(stream("final_norm", "norm", lg * h, 1, 1, 1, 4.0, EAGER_KERNELS["norm"], rows=lg))
    ops.append(gemm("lm_head", "lm_head", lg, model.vocab_size / tp, h, 1, kernels=EAGER_KERNELS["lm_head"]))
    if tp > 1:  # gather the vocabulary shards of the logits (fp32)
        ops.append(Op("logits_gather", "comm", "allreduce", 0.0, lg * model.vocab_size / tp * 4, 1, lg))
    if pp > 1:  # activations cross pp - 1 stage boundaries
        ops.append(Op("stage_send", "comm", "send", 0.0, t * h * a * (pp - 1), pp - 1, t))
    return ops


def attention_ops(model: ModelSpec, b: Batch, dt: Dtypes, tp: int = 1, pp: int = 1) -> list[Op]:
    """Attention over the KV cache: prefill is compute-bound (grows with the square of the
    prompt), decode reads every cached K and V (grows with the context)."""
    L = model.num_hidden_layers
    heads = model.num_attention_heads / tp
    kvh = max(model.kv_heads / tp, 1.0)
    hd = model.hd
    a = DTYPE_BYTES[dt.act]
    kvb = DTYPE_BYTES[dt.kv]
    ops: list[Op] = []
    if b.prefill_tokens:
        pairs = b.prefill_pairs
        if model.sliding_window:
            pairs = min(pairs, b.prefill_tokens * model.sliding_window)
        flops = 4.0 * heads * hd * pairs * L  # QK^T and PV, 2 FLOPs per multiply-add
        ctx_read = b.prefill_ctx * 2 * kvh * hd * kvb
        new = b.prefill_tokens * ((heads + 2 * kvh) * hd * a + heads * hd * a + 2 * kvh * hd * kvb)
        ops.append(Op("attn_prefill", "attention", "attn_prefill", flops, (ctx_read + new) * L, L,
                      seqs=b.prefill_seqs, kernels=EAGER_KERNELS["attention"]))
    if b.decode_seqs:
        ctx = b.decode_ctx + b.decode_seqs  # each attends to its cache plus itself
        if model.sliding_window:
            ctx = min(ctx, b.decode_seqs * model.sliding_window)
        flops = 4.0 * heads * hd * ctx * L
        by = (ctx * 2 * kvh * hd * kvb + b.decode_seqs * (2 * heads * hd * a)) * L
        ops.append(Op("attn_decode", "attention", "attn_decode", flops, by, L, seqs=b.decode_seqs,
                      kernels=EAGER_KERNELS["attention"]))
    return ops


def step_ops(model: ModelSpec, b: Batch, dt: Dtypes = Dtypes(), tp: int = 1, pp: int = 1) -> list[Op]:
    """All ops of one step, per device: each layer on the device of its pipeline stage."""
    check_tp(model, tp, pp)
    return dense_ops(model, b.tokens, b.logit_rows, dt, tp, pp) + attention_ops(model, b, dt, tp, pp)


def eager_kernels(model: ModelSpec, tp: int = 1, pp: int = 1) -> int:
    """Kernels eager PyTorch launches in one step (host dispatch count)."""
    ops = dense_ops(model, 1, 1, Dtypes(), tp, pp) + attention_ops(model, Batch(1, 1, 0, 0, 0, 0), Dtypes(), tp, pp)
    return sum(o.kernels * o.layers for o in ops) + EAGER_KERNELS["sample"] + EAGER_KERNELS["step_inputs"]


def total_flops(ops: list[Op]) -> float:
    return float(sum(np.sum(o.flops) for o in ops))


def pairs_of_chunk(new: int, cached: int) -> float:
    """Causal query-key pairs of a chunk of `new` tokens after `cached` ones."""
    return new * cached + new * (new + 1) / 2


__all__ = ["Batch", "Op", "Dtypes", "CATEGORIES", "EAGER_KERNELS", "step_ops", "dense_ops",
           "attention_ops", "check_tp", "eager_kernels", "total_flops", "pairs_of_chunk"]
