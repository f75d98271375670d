"""The operations of one forward pass (one moment), hardware-free.

A step is described by aggregates of its batch, so the engine can cost a step in O(1):
`tokens` new tokens in all; decode sequences with the sum of their contexts; prefill chunks
with the sum of their attention pairs. Every count is per device after tensor-parallel
sharding and for all layers of one pipeline stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from hwmodels.spec import DTYPE_BYTES, FORMATS
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
    kind: str                 # gemm | attn_prefill | attn_decode | stream | allreduce | send | alltoall
    flops: Num                # per device, all layers
    bytes: Num                # read + written, per device, all layers (alltoall: received by the busiest)
    layers: int               # how many times it runs in the step (per-kernel floors, dispatches)
    m: Num = 0.0              # GEMM rows / element-wise rows (tokens)
    n: float = 0.0            # GEMM columns per device
    k: float = 0.0            # GEMM reduction dim per device
    copies: Num = 1.0         # distinct weight matrices streamed (MoE experts touched)
    seqs: Num = 0.0           # sequences in an attention kernel
    kernels: int = 1          # eager kernel launches per layer
    fmt: str = ""             # GEMM: the weights' storage format (hwmodels.spec.FORMATS)
    dequant: Num = 0.0        # GEMM: vector ops to unpack the weights where the part cannot use them as stored
    elems: Num = 0.0          # elements per layer (element-wise: of the tensor; GEMM: of the output);
                              # simulator/moment/kernels.py prices each implementation's kernels by them


@dataclass(frozen=True)
class Dtypes:
    """Formats of a run: linear weights, activations, KV cache, and the routed experts' weights
    where they differ from the rest (gpt-oss: MXFP4 experts, bf16 attention)."""

    weight: str = "bf16"
    act: str = "bf16"
    kv: str = "bf16"
    expert: str = ""

    @property
    def experts(self) -> str:
        return self.expert or self.weight

    @property
    def compute(self) -> str:
        """The tensor-core dtype of the dense GEMMs: fp8 weights run fp8 GEMMs, fp4 ones fp4 (each
        where the part has the units); weight-only formats run in the activation dtype."""
        return FORMATS[self.weight].tensor or self.act

    @staticmethod
    def of(model: ModelSpec, weight: str | None = None, act: str = "bf16", kv: str | None = None,
           plain: str | None = None) -> Dtypes:
        """A run's dtypes: `weight` for every linear layer if given; else the checkpoint's own
        formats (its quantization_config), else `plain` (default: the activation dtype)."""
        if weight is not None:
            return Dtypes(weight, act, kv or act)
        if model.quantization_config is None:
            return Dtypes(plain or act, act, kv or act)
        dense, experts = model.native_formats
        return Dtypes(dense, act, kv or act, experts if experts != dense else "")


ROW_TILE = 128  # rows of a GEMM tile: each tile of rows unpacks quantised weights again


def gemm_op(name: str, cat: str, m: Num, n: float, k: float, layers: int, dt: Dtypes, copies: Num = 1.0,
            kernels: int = 1, fmt: str | None = None) -> Op:
    """m rows x n columns over k, `layers` times, on weights stored as `fmt` (default the run's
    weight format); `copies` distinct weight matrices share the rows (MoE: the experts touched)."""
    fmt = fmt or dt.weight
    m = np.asarray(m, dtype=float)
    c = np.asarray(copies, dtype=float)
    fl = 2.0 * m * n * k * layers
    by = (DTYPE_BYTES[fmt] * n * k * c + DTYPE_BYTES[dt.act] * m * (n + k)) * layers
    per = FORMATS[fmt].dequant_ops
    dq = per * n * k * c * np.ceil(m / np.maximum(c, 1.0) / ROW_TILE) * layers if per else 0.0
    return Op(name, cat, "gemm", fl, by, layers, m, n, k, copies, 0.0, kernels, fmt, dq, m * n)


def stream_op(name: str, cat: str, elems: Num, reads: float, writes: float, layers: int, dt: Dtypes, rows: Num,
              flops_per_elem: float = 1.0, kernels: int = 1) -> Op:
    """An element-wise kernel over `rows` tokens (one thread block each on a GPU)."""
    e = np.asarray(elems, dtype=float)
    return Op(name, cat, "stream", flops_per_elem * e * layers, (reads + writes) * DTYPE_BYTES[dt.act] * e * layers,
              layers, m=rows, kernels=kernels, elems=e)


def act_flops(model: ModelSpec) -> float:
    """FLOPs per element of the MLP activation with its gating multiply (tanh-GELU costs more than SiLU)."""
    return 8.0 if "gelu" in model.act else 4.0


def check_tp(model: ModelSpec, tp: int, pp: int = 1, ep: int = 1) -> None:
    if tp < 1 or model.num_attention_heads % tp:
        raise ValueError(f"tp={tp} must divide num_attention_heads={model.num_attention_heads}")
    if tp > model.kv_heads and tp % model.kv_heads:
        raise ValueError(f"tp={tp} must divide or be a multiple of num_key_value_heads={model.kv_heads}")
    if tp <= model.kv_heads and model.kv_heads % tp:
        raise ValueError(f"tp={tp} must divide num_key_value_heads={model.kv_heads}")
    if pp < 1 or model.num_hidden_layers % pp:
        raise ValueError(f"pp={pp} must divide num_hidden_layers={model.num_hidden_layers}")
    if ep != 1:
        if not model.is_moe:
            raise ValueError(f"ep={ep} needs a mixture-of-experts model; {model.name} is dense (allowed: 1)")
        if ep != tp:
            raise ValueError(f"ep={ep} must be 1 or equal tp={tp} (the experts spread over the tensor-parallel "
                             "devices)")
        if model.num_local_experts % ep:
            raise ValueError(f"ep={ep} must divide the {model.num_local_experts} routed experts")


def dense_ops(model: ModelSpec, tokens: Num, logits: Num, dt: Dtypes, tp: int = 1, pp: int = 1, ep: int = 1,
              moe_imbalance: float = 1.0, busiest: bool = True) -> list[Op]:
    """Ops whose cost depends only on the token count (GEMMs, element-wise, collectives).

    A moment is one batch through all pipeline stages, so every layer is counted once (on the
    device of its stage) plus the pp - 1 sends between stages. `tokens` and `logits` may be
    numpy arrays: the result then holds arrays of the same shape. Layers of different kinds
    (dense and MoE FFNs) are separate ops with their own layer counts: no loop over layers.
    `busiest` (moe_ops): expert-parallel MoE layers on the busiest device (what a step waits
    for), else on the average one (the work all devices share: tp x it is the whole work).
    """
    t = np.asarray(tokens, dtype=float)
    lg = np.asarray(logits, dtype=float)
    L = model.num_hidden_layers
    Ld, Lm = model.dense_layer_count, model.moe_layer_count
    h = model.hidden_size
    a = DTYPE_BYTES[dt.act]
    q = model.q_dim / tp
    kv = max(model.kv_dim / tp, model.hd)
    inter = model.dense_intermediate / tp
    ops: list[Op] = []

    def gemm(name: str, cat: str, m: Num, n: float, k: float, layers: int, copies: Num = 1.0,
             kernels: int = 1) -> Op:
        return gemm_op(name, cat, m, n, k, layers, dt, copies, kernels)

    def stream(name: str, cat: str, elems: Num, reads: float, writes: float, layers: int,
               flops_per_elem: float = 1.0, kernels: int = 1, rows: Num | None = None) -> Op:
        return stream_op(name, cat, elems, reads, writes, layers, dt, t if rows is None else rows, flops_per_elem,
                         kernels)

    ops.append(stream("embed", "embed", t * h, 1, 1, 1, 0.0, EAGER_KERNELS["embed"]))
    ops.append(stream("input_norm", "norm", t * h, 1, 1, L, 4.0, EAGER_KERNELS["norm"]))
    if model.is_mla:
        ops += mla_ops(model, t, dt, tp)
    else:
        ops.append(gemm("qkv_proj", "qkv_proj", t, q + 2 * kv, h, L))
        if model.qkv_bias:
            ops.append(stream("qkv_bias", "qkv_proj", t * (q + 2 * kv), 1, 1, L, 1.0))
        if model.qk_norm_layers:
            ops.append(stream("qk_norm", "norm", t * (q + kv), 1, 1, model.qk_norm_layers, 4.0, EAGER_KERNELS["norm"]))
        ops.append(stream("rope", "rope", t * (q + kv), 1, 1, L, 6.0, EAGER_KERNELS["rope"]))
    ops.append(gemm("o_proj", "o_proj", t, h, model.o_dim / tp, L))
    if tp > 1:
        ops.append(Op("attn_allreduce", "comm", "allreduce", 0.0, t * h * a * L, L, t, kernels=1))
    if model.family.norms > 2:  # Gemma 2/3 norm each sublayer's output too
        ops.append(stream("attn_out_norm", "norm", t * h, 1, 1, L, 4.0, EAGER_KERNELS["norm"]))
    ops.append(stream("attn_residual", "residual_add", t * h, 2, 1, L, 1.0, EAGER_KERNELS["residual_add"]))
    ops.append(stream("post_attn_norm", "norm", t * h, 1, 1, L, 4.0, EAGER_KERNELS["norm"]))
    if Ld:
        up = 2 * inter if model.gated else inter
        ops.append(gemm("ffn_up", "ffn_up", t, up, h, Ld))
        ops.append(stream("ffn_act", "ffn_act", t * inter, 2 if model.gated else 1, 1, Ld, act_flops(model),
                          EAGER_KERNELS["ffn_act"] if model.gated else 1))
        ops.append(gemm("ffn_down", "ffn_down", t, h, inter, Ld))
    if Lm:
        ops += moe_ops(model, t, dt, tp, ep, moe_imbalance, busiest)
    reduced = Ld + (Lm if ep == 1 else 0)  # expert-parallel MoE layers combine by all-to-all instead
    if tp > 1 and reduced:
        ops.append(Op("ffn_allreduce", "comm", "allreduce", 0.0, t * h * a * reduced, reduced, t, kernels=1))
    if model.family.norms > 2:
        ops.append(stream("ffn_out_norm", "norm", t * h, 1, 1, L, 4.0, EAGER_KERNELS["norm"]))
    ops.append(stream("ffn_residual", "residual_add", t * h, 2, 1, L, 1.0, EAGER_KERNELS["residual_add"]))
    ops.append(stream("final_norm", "norm", lg * h, 1, 1, 1, 4.0, EAGER_KERNELS["norm"], rows=lg))
    # the output head stays in 16 bits when the linear layers are quantised (vLLM, checkpoints)
    head = dt.weight if DTYPE_BYTES[dt.weight] >= 2 else "bf16"
    ops.append(gemm_op("lm_head", "lm_head", lg, model.vocab_size / tp, h, 1, dt, kernels=EAGER_KERNELS["lm_head"],
                       fmt=head))
    if tp > 1:  # gather the vocabulary shards of the logits (fp32)
        ops.append(Op("logits_gather", "comm", "allreduce", 0.0, lg * model.vocab_size / tp * 4, 1, lg))
    if pp > 1:  # activations cross pp - 1 stage boundaries
        ops.append(Op("stage_send", "comm", "send", 0.0, t * h * a * (pp - 1), pp - 1, t))
    return ops


def mla_ops(model: ModelSpec, t: Num, dt: Dtypes, tp: int = 1) -> list[Op]:
    """Multi-head latent attention's projections (DeepSeek-V2/V3) as vLLM and SGLang run them.

    q comes from the hidden state (through the q_lora_rank bottleneck and its RMSNorm where there
    is one), the compressed KV from kv_a_proj: a kv_lora_rank latent (RMSNormed) plus one rope
    key shared by all heads. The latent's up-projection kv_b_proj runs on every new token:
    absorbed into q and into the output in decode (W_UK, W_UV), decompressing the new tokens'
    K and V in prefill; either way 2 x kv_lora_rank x heads x (qk_nope + v) FLOPs per token.
    q_a and kv_a are replicated over tp; the rest splits by heads."""
    L, h = model.num_hidden_layers, model.hidden_size
    heads = model.num_attention_heads / tp
    nope, rope, v, r, qr = (model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim, model.kv_lora_rank,
                            model.q_lora_rank)
    norm = EAGER_KERNELS["norm"]
    ops: list[Op] = []
    if qr:
        ops += [gemm_op("q_a_proj", "qkv_proj", t, qr, h, L, dt),
                stream_op("q_a_norm", "norm", t * qr, 1, 1, L, dt, t, 4.0, norm),
                gemm_op("q_b_proj", "qkv_proj", t, heads * (nope + rope), qr, L, dt)]
    else:
        ops.append(gemm_op("q_proj", "qkv_proj", t, heads * (nope + rope), h, L, dt))
    ops += [gemm_op("kv_a_proj", "qkv_proj", t, r + rope, h, L, dt),
            stream_op("kv_a_norm", "norm", t * r, 1, 1, L, dt, t, 4.0, norm),
            gemm_op("kv_b_proj", "qkv_proj", t, heads * (nope + v), r, L, dt),
            stream_op("rope", "rope", t * (heads + 1) * rope, 1, 1, L, dt, t, 6.0, EAGER_KERNELS["rope"])]
    return ops


def moe_ops(model: ModelSpec, t: Num, dt: Dtypes, tp: int = 1, ep: int = 1, imbalance: float = 1.0,
            busiest: bool = True) -> list[Op]:
    """The FFN of the MoE layers, per device: the router; the routed experts as grouped GEMMs (the
    t x k routed rows spread over the experts hit, M = t k / E each on average), whose weight
    bytes count the experts the batch touches, expected over uniform random routing
    (E (1 - (1 - k/E)^t): a small batch touches few, a large one all); the shared experts; and
    with expert parallelism the all-to-all dispatch and combine.

    ep = 1: every device holds a 1/tp slice of every expert. ep = tp: each device holds E/ep whole
    experts; attention stays tensor-parallel and its all-reduce runs as a reduce-scatter and an
    all-gather (the same bytes) around the MoE block, so each device routes t/ep tokens and runs
    the shared experts (replicated) on them. The busiest device bounds the layer: its rows are
    the mean t k / ep plus the spread of random routing (the expected largest of ep binomial
    loads, Blom's normal approximation: 1.43 standard deviations for 8), times `imbalance`
    (skewed expert popularity, >= 1), and they hit its E/ep experts at random. Not `busiest`: the
    average device's t k / ep rows (the whole work over the devices, for totals)."""
    L = model.moe_layer_count
    E, k = model.num_local_experts, model.num_experts_per_tok
    h = model.hidden_size
    t = np.asarray(t, dtype=float)
    width = model.expert_intermediate / (tp // ep)
    local = E / ep
    if ep > 1:
        mean = t * k / ep
        z = NormalDist().inv_cdf((ep - 0.375) / (ep + 0.25))  # the expected largest of ep normals (Blom)
        rows = np.minimum((mean + z * np.sqrt(mean * (1 - 1 / ep))) * imbalance, t * min(k, local)) if busiest \
            else mean
        touched = local * (1.0 - (1.0 - 1.0 / local) ** rows)  # the busiest device's rows over its experts
        own, shared_tp = t / ep, 1
    else:
        rows, own, shared_tp = t * k, t, tp
        touched = E * (1.0 - (1.0 - k / E) ** t)
    act = act_flops(model)
    ops = [gemm_op("router", "ffn_up", own, E, h, L, dt, kernels=EAGER_KERNELS["moe_router"], fmt=dt.act),
           gemm_op("experts_up", "ffn_up", rows, 2 * width, h, L, dt, copies=touched, fmt=dt.experts),
           stream_op("experts_act", "ffn_act", rows * width, 2, 1, L, dt, rows, act, EAGER_KERNELS["ffn_act"]),
           gemm_op("experts_down", "ffn_down", rows, h, width, L, dt, copies=touched, fmt=dt.experts)]
    if model.shared_intermediate:
        s = model.shared_intermediate / shared_tp
        ops += [gemm_op("shared_up", "ffn_up", own, 2 * s, h, L, dt),
                stream_op("shared_act", "ffn_act", own * s, 2, 1, L, dt, own, act, EAGER_KERNELS["ffn_act"]),
                gemm_op("shared_down", "ffn_down", own, h, s, L, dt)]
    if ep > 1:  # the busiest device receives its rows' hidden states (dispatch) and returns its outputs (combine)
        moved = rows * h * DTYPE_BYTES[dt.act] * (ep - 1) / ep * L
        ops += [Op("moe_dispatch", "comm", "alltoall", 0.0, moved, L, rows),
                Op("moe_combine", "comm", "alltoall", 0.0, moved, L, rows)]
    return ops


@dataclass(frozen=True)
class AttnShape:
    """Attention of the layers that share a window, per device and layer: the work per causal
    query-key pair and per cached token in prefill, per key and per sequence in decode."""

    layers: int
    kind: str               # full | sliding | chunked
    size: int | None        # the window (sliding) or chunk (chunked) in tokens
    pair_flops: float       # prefill: QK^T and PV per pair
    ctx_flops: float        # prefill, per cached token (MLA: the up-projection of its latent)
    ctx_bytes: float        # prefill, per cached token
    new_bytes: float        # prefill, per new token: q, k, v, output, the cache write
    key_flops: float        # decode, per key attended
    key_bytes: float        # decode, per key read from the cache
    seq_bytes: float        # decode, per sequence: its query and output


def attention_shapes(model: ModelSpec, dt: Dtypes, tp: int = 1) -> list[AttnShape]:
    """One AttnShape per window group of the model's layers (full, sliding, chunked).

    Standard attention: 2 FLOPs per multiply-add in QK^T and PV over head_dim; the KV heads'
    K and V are read per key. MLA (DeepSeek): prefill decompresses the latents and attends
    with qk_nope + qk_rope dims for QK^T and v_head_dim for PV; decode runs absorbed, as
    multi-query attention over the latent (kv_lora_rank + qk_rope dims for QK^T, kv_lora_rank
    for PV) that every head shares: 2176 FLOPs per key and head but one 576-value latent read
    per key for all heads, so its decode attention is compute-heavy where GQA's is memory-bound."""
    heads = model.num_attention_heads / tp
    a, kvb = DTYPE_BYTES[dt.act], DTYPE_BYTES[dt.kv]
    if model.is_mla:
        nope, rope, v, r = model.qk_nope_head_dim, model.qk_rope_head_dim, model.v_head_dim, model.kv_lora_rank
        latent = (r + rope) * kvb
        base = dict(pair_flops=heads * (2 * (nope + rope) + 2 * v), ctx_flops=2.0 * r * heads * (nope + v),
                    ctx_bytes=latent + 2 * heads * (nope + v) * a, new_bytes=heads * (2 * (nope + rope) + 2 * v) * a + latent,
                    key_flops=heads * (2 * (r + rope) + 2 * r), key_bytes=latent, seq_bytes=heads * (2 * r + rope) * a)
    else:
        kvh, hd = max(model.kv_heads / tp, 1.0), model.hd
        base = dict(pair_flops=4.0 * heads * hd, ctx_flops=0.0, ctx_bytes=2 * kvh * hd * kvb,
                    new_bytes=(heads + 2 * kvh) * hd * a + heads * hd * a + 2 * kvh * hd * kvb,
                    key_flops=4.0 * heads * hd, key_bytes=2 * kvh * hd * kvb, seq_bytes=2 * heads * hd * a)
    return [AttnShape(n, kind, size, **base) for kind, size, n in model.attention_groups]


def _reach(kind: str, size: float, p: float) -> float:
    """Keys seen by the queries at positions 1..p together: min(i, W) each in a sliding window,
    the keys of its own chunk so far ((i - 1) mod C + 1) in chunked attention."""
    if kind == "sliding":
        return p * (p + 1) / 2 if p <= size else size * (size + 1) / 2 + (p - size) * size
    q, r = divmod(p, size)
    return q * size * (size + 1) / 2 + r * (r + 1) / 2


def windowed_pairs(kind: str, size: float | None, seqs: int, tokens: float, pairs: float, ctx: float) -> float:
    """Query-key pairs of the prefill chunks in a layer of this kind, from the batch's sums: each
    of the `seqs` chunks taken at the mean cached and new lengths (exact for one chunk, or for
    chunks alike), and never more than the causal `pairs`."""
    if kind == "full" or not tokens or size is None:
        return pairs
    c = ctx / seqs if seqs else 0.0
    n = tokens / seqs if seqs else float(tokens)
    return min(pairs, (seqs or 1) * (_reach(kind, size, c + n) - _reach(kind, size, c)))


def windowed_keys(kind: str, size: float | None, seqs: int, keys: float) -> float:
    """Keys read by `seqs` decode queries that see `keys` in all without a window: at most the
    window each; in chunked attention half a chunk each, the mean over a long request's positions
    (exact within the first half chunk; a single sequence late in a chunk sees up to twice that)."""
    if kind == "full" or size is None:
        return keys
    cap = seqs * (size if kind == "sliding" else size / 2)
    return keys if keys <= cap else cap


def attention_ops(model: ModelSpec, b: Batch, dt: Dtypes, tp: int = 1, pp: int = 1) -> list[Op]:
    """Attention over the KV cache: prefill is compute-bound (grows with the square of the
    prompt), decode reads every cached K and V (grows with the context). Layers with a sliding
    window or chunks see fewer keys (windowed_pairs, windowed_keys)."""
    ops: list[Op] = []
    for s in attention_shapes(model, dt, tp):
        L = s.layers
        tag = "" if s.kind == "full" else f"_{s.kind}{s.size}"
        if b.prefill_tokens:
            pairs = windowed_pairs(s.kind, s.size, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx)
            flops = (s.pair_flops * pairs + s.ctx_flops * b.prefill_ctx) * L
            by = (s.ctx_bytes * b.prefill_ctx + s.new_bytes * b.prefill_tokens) * L
            ops.append(Op("attn_prefill" + tag, "attention", "attn_prefill", flops, by, L, seqs=b.prefill_seqs,
                          kernels=EAGER_KERNELS["attention"]))
        if b.decode_seqs:
            ctx = windowed_keys(s.kind, s.size, b.decode_seqs, b.decode_ctx + b.decode_seqs)  # cache + itself
            by = (s.key_bytes * ctx + s.seq_bytes * b.decode_seqs) * L
            ops.append(Op("attn_decode" + tag, "attention", "attn_decode", s.key_flops * ctx * L, by, L,
                          seqs=b.decode_seqs, kernels=EAGER_KERNELS["attention"]))
    return ops


def step_ops(model: ModelSpec, b: Batch, dt: Dtypes = Dtypes(), tp: int = 1, pp: int = 1, ep: int = 1,
             moe_imbalance: float = 1.0, busiest: bool = True) -> list[Op]:
    """All ops of one step, per device: each layer on the device of its pipeline stage."""
    check_tp(model, tp, pp, ep)
    return dense_ops(model, b.tokens, b.logit_rows, dt, tp, pp, ep, moe_imbalance, busiest) + \
        attention_ops(model, b, dt, tp, pp)


def total_flops(ops: list[Op]) -> float:
    return float(sum(np.sum(o.flops) for o in ops))


def pairs_of_chunk(new: int, cached: int) -> float:
    """Causal query-key pairs of a chunk of `new` tokens after `cached` ones."""
    return new * cached + new * (new + 1) / 2


__all__ = ["Batch", "Op", "Dtypes", "CATEGORIES", "EAGER_KERNELS", "step_ops", "dense_ops", "moe_ops", "mla_ops",
           "attention_ops", "attention_shapes", "AttnShape", "windowed_pairs", "windowed_keys", "gemm_op", "stream_op", "check_tp",
           "total_flops", "pairs_of_chunk"]
