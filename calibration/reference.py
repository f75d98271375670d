"""A plain-PyTorch Llama-style decoder: the thing whose time `momentsim validate` measures.

Written the way eager Hugging Face code runs (one aten op per line, no fusion), so that its
kernels are the ones `simulator.moment.ops.EAGER_KERNELS` counts: RMSNorm as in HF (to fp32, pow, mean,
+eps, rsqrt, mul, to dtype, mul weight), a fused QKV projection, RoPE in the rotate_half form on
q and k, grouped-query attention through SDPA over a preallocated static KV cache (index_copy_
writes), O projection, residual adds, a fused gate+up projection, SiLU * up, down projection, a
final norm and the LM head on the last token of each sequence, greedy argmax.

Weights are random (seeded) with real shapes; `n_layers` may be smaller than the model's (step
time is linear in layers), and predictions then use a ModelSpec with the same number of layers.
The primitives (`rms_norm`, `apply_rope`, `attention`, `swiglu`) are shared with the
microbenchmarks, so an isolated op is timed in exactly the form the decoder runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from simulator.moment.model import ModelSpec

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# -- the primitives (shared with calibration.microbench) ----------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Hugging Face LlamaRMSNorm, op for op (the .to() calls are no-ops in fp32)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return weight * h.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """HF apply_rotary_pos_emb: x * cos + rotate_half(x) * sin on q and k (5 kernels each)."""
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def split_qkv(qkv: torch.Tensor, heads: int, kv_heads: int, hd: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of a fused QKV output as (batch, heads, tokens, head_dim): no kernels."""
    b, n, _ = qkv.shape
    q, k, v = qkv.split((heads * hd, kv_heads * hd, kv_heads * hd), dim=-1)
    return (q.view(b, n, heads, hd).transpose(1, 2), k.view(b, n, kv_heads, hd).transpose(1, 2),
            v.view(b, n, kv_heads, hd).transpose(1, 2))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, pos: torch.Tensor, end: int, causal: bool) -> torch.Tensor:
    """Write the new K and V into the static cache, attend over [0, end), merge the heads.

    4 kernels: 2 index_copy_, SDPA (GQA without repeating K/V), the transpose copy before o_proj.
    The batch shares one length (uniform batches), so no mask is needed: a prefill from position
    0 is causal, a decode token sees the whole cache.
    """
    b, heads, n, hd = q.shape
    k_cache[:b].index_copy_(2, pos, k)
    v_cache[:b].index_copy_(2, pos, v)
    o = F.scaled_dot_product_attention(q, k_cache[:b, :, :end], v_cache[:b, :, :end], is_causal=causal,
                                       enable_gqa=k_cache.shape[1] != heads)
    return o.transpose(1, 2).reshape(b, n, heads * hd)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up from the fused gate+up output (2 kernels)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_tables(max_len: int, hd: int, theta: float, device: torch.device | str, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)


# -- the decoder --------------------------------------------------------------------------------

@dataclass
class Layer:
    in_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    k_cache: torch.Tensor | None = None
    v_cache: torch.Tensor | None = None


class Reference:
    """Random-weight Llama-style decoder of `spec`'s shapes with a static KV cache.

    `n_layers` overrides the model's layer count (CPU runs use 1-4). Dense (non-MoE) models only.
    """

    def __init__(self, spec: ModelSpec, n_layers: int | None = None, dtype: str = "fp32",
                 device: str = "cpu", seed: int = 0, eps: float = 1e-5, theta: float = 10000.0):
        if spec.is_moe:
            raise ValueError("the reference decoder is dense; MoE models are not supported")
        if not spec.gated:
            raise ValueError("the reference decoder has a gated (SwiGLU) FFN")
        self.spec = spec
        self.n_layers = n_layers or spec.num_hidden_layers
        self.dtype = TORCH_DTYPES[dtype]
        self.device = torch.device(device)
        self.eps, self.theta = eps, theta
        self.heads, self.kv_heads, self.hd = spec.num_attention_heads, spec.kv_heads, spec.hd
        h, q, kv, inter, vocab = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size, spec.vocab_size
        gen = torch.Generator(device=self.device).manual_seed(seed)

        def rand(*shape: int, std: float) -> torch.Tensor:
            t = torch.empty(shape, dtype=torch.float32, device=self.device)
            return t.normal_(0.0, std, generator=gen).to(self.dtype)

        def ones(n: int) -> torch.Tensor:
            return (1.0 + rand(n, std=0.05)).to(self.dtype)

        self.embed = rand(vocab, h, std=1.0)
        self.layers = [
            Layer(ones(h), rand(q + 2 * kv, h, std=h ** -0.5), rand(h, q, std=q ** -0.5), ones(h),
                  rand(2 * inter, h, std=h ** -0.5), rand(h, inter, std=inter ** -0.5))
            for _ in range(self.n_layers)
        ]
        self.final_norm = ones(h)
        self.lm_head = self.embed if spec.tie_word_embeddings else rand(vocab, h, std=h ** -0.5)
        self.max_batch = 0
        self.max_len = 0
        self.cos = self.sin = torch.empty(0)

    # -- the KV cache ---------------------------------------------------------------------------
    def alloc_cache(self, batch: int, max_len: int, fill: bool = False) -> None:
        """Static cache of `batch` x `max_len` tokens per layer (random contents when `fill`, so a
        decode at context c can be timed without running a prefill first)."""
        self.max_batch, self.max_len = batch, max_len
        gen = torch.Generator(device=self.device).manual_seed(1)
        for lay in self.layers:
            lay.k_cache = lay.v_cache = None
        for lay in self.layers:
            shape = (batch, self.kv_heads, max_len, self.hd)
            if fill:
                lay.k_cache = torch.empty(shape, device=self.device, dtype=self.dtype).normal_(generator=gen)
                lay.v_cache = torch.empty(shape, device=self.device, dtype=self.dtype).normal_(generator=gen)
            else:
                lay.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
                lay.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.cos, self.sin = rope_tables(max_len, self.hd, self.theta, self.device, self.dtype)

    def free_cache(self) -> None:
        for lay in self.layers:
            lay.k_cache = lay.v_cache = None
        self.max_batch = self.max_len = 0

    # -- the pieces that validate times ---------------------------------------------------------
    def rope_at(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions [start, start+n) and their cos/sin rows: per step, not per layer."""
        pos = torch.arange(start, start + n, device=self.device)
        return pos, self.cos.index_select(0, pos), self.sin.index_select(0, pos)

    def attn_block(self, x: torch.Tensor, lay: Layer, pos: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, end: int) -> torch.Tensor:
        """input norm, QKV, RoPE, attention with the cache, O projection, residual add."""
        assert lay.k_cache is not None and lay.v_cache is not None, "alloc_cache first"
        h = rms_norm(x, lay.in_norm, self.eps)
        q, k, v = split_qkv(F.linear(h, lay.qkv), self.heads, self.kv_heads, self.hd)
        q, k = apply_rope(q, k, cos, sin)
        o = attention(q, k, v, lay.k_cache, lay.v_cache, pos, end, causal=x.shape[1] > 1)
        return x + F.linear(o, lay.o)

    def ffn_block(self, x: torch.Tensor, lay: Layer) -> torch.Tensor:
        """post-attention norm, fused gate+up, SiLU * up, down projection, residual add."""
        h = rms_norm(x, lay.post_norm, self.eps)
        return x + F.linear(swiglu(F.linear(h, lay.gate_up)), lay.down)

    def hidden(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Hidden states after the last layer for tokens `ids` (batch, n) at positions start..."""
        b, n = ids.shape
        if b > self.max_batch or start + n > self.max_len:
            raise ValueError(f"cache holds {self.max_batch} x {self.max_len}; asked for {b} x {start + n}")
        pos, cos, sin = self.rope_at(start, n)
        x = F.embedding(ids, self.embed)
        for lay in self.layers:
            x = self.ffn_block(self.attn_block(x, lay, pos, cos, sin, start + n), lay)
        return x

    def logits(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """fp32 logits of the last token of each sequence."""
        x = self.hidden(ids, start)[:, -1]
        out = F.linear(rms_norm(x, self.final_norm, self.eps), self.lm_head)
        return out.float()

    def step(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """One forward pass (a prefill from `start`=0 or a decode step) and greedy sampling; the
        next tokens stay on the device."""
        return self.logits(ids, start).argmax(-1)

    # -- whole runs ---------------------------------------------------------------------------
    def generate(self, prompt: torch.Tensor, new_tokens: int) -> list[list[int]]:
        """Static-batch generation: one prefill, then new_tokens - 1 decode steps (each decode
        step's input is the previous step's output, read back to the host as a server does)."""
        b, n = prompt.shape
        tok = self.step(prompt.to(self.device), 0).cpu()
        out = [tok.tolist()]
        for i in range(new_tokens - 1):
            tok = self.step(tok.view(b, 1).to(self.device), n + i).cpu()
            out.append(tok.tolist())
        return [list(r) for r in zip(*out, strict=True)]

    def capture(self, batch: int, start: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """A decode step at context `start` captured as one CUDA graph (emulated off CUDA, see
        calibration.graphs); returns a function that copies the host's token ids in, replays
        the graph and reads the next tokens back."""
        from calibration.graphs import Captured

        ids = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        cap = Captured(lambda: self.step(ids, start), (ids,), self.device, warmup=3)

        def replay(tokens: torch.Tensor) -> torch.Tensor:
            ids.copy_(tokens.view(batch, 1), non_blocking=True)
            return cap.replay().cpu()

        replay.captured = cap  # type: ignore[attr-defined]  # the graph and all it reads stay alive
        return replay


def estimate_bytes(spec: ModelSpec, n_layers: int, dtype: str) -> float:
    """Bytes of a Reference's weights, before building it (caches are sized per case)."""
    size = torch.tensor([], dtype=TORCH_DTYPES[dtype]).element_size()
    per_layer = spec.layer_params() * size
    emb = spec.vocab_size * spec.hidden_size * size * (1 if spec.tie_word_embeddings else 2)
    return float(n_layers * per_layer + emb)


__all__ = ["Reference", "count_kernels", "rms_norm", "apply_rope", "rotate_half", "split_qkv", "attention", "swiglu",
           "rope_tables", "TORCH_DTYPES", "estimate_bytes"]


# -- counting kernels -----------------------------------------------------------------------------

VIEW_OPS = frozenset({
    "view", "transpose", "slice", "select", "split", "split_with_sizes", "chunk", "t", "expand", "unsqueeze",
    "squeeze", "as_strided", "permute", "reshape", "_reshape_alias", "alias", "narrow", "detach", "unflatten",
    "flatten", "_unsafe_view", "to", "contiguous", "lift_fresh", "numpy_T", "expand_as", "view_as",
})


def count_kernels(fn: Callable[[], object]) -> tuple[int, list[str]]:
    """Eager kernels `fn` launches: top-level aten ops that do work. A view (transpose, slice,
    a no-op .to()) counts only if something under it computes (a .to() that converts, a reshape
    that has to copy). Uses the CPU profiler; returns the count and the ops counted."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def computes(e: object) -> bool:
        name = e.name.removeprefix("aten::")  # type: ignore[attr-defined]
        if name not in VIEW_OPS:
            return True
        return any(computes(c) for c in e.cpu_children)  # type: ignore[attr-defined]

    top = [e for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    names = [e.name.removeprefix("aten::") for e in top if computes(e)]
    return len(names), names
