"""The kernels an implementation launches for each op of a step, the bytes each moves, and the
framework calls its host makes: what turns simulator.moment.ops' ops into device and host time.

simulator.moment.ops counts each op's FLOPs and the bytes of one ideal kernel. Real code does
not run ideal kernels, and how far it is from them decides a step's time at small batches:

- `pytorch`: plain eager PyTorch as calibration/reference.py writes a Llama decoder (Hugging
  Face RMSNorm in fp32: 8 kernels that move 36 bytes per bf16 element where a fused norm moves
  4; RoPE as rotate_half on q and k: 10 kernels; the KV cache written by two index_copy_ into a
  static cache; SDPA; SiLU then mul; a residual add per block; the logits cast to fp32), with
  the views between them (splits, transposes, slices), which launch nothing but cost the host
  a call each.
- `fused`: a serving stack (vLLM, SGLang, TensorRT-LLM): the residual add fused into the next
  RMSNorm (fused_add_rms_norm), RoPE on q and k in place in one kernel, the KV written by one
  reshape_and_cache kernel, one attention kernel (flash prefill / paged decode), SiLU*mul fused.

Each op is a tuple of `Call`s. A call that launches a kernel costs a per-kernel device floor and
moves `act` elements of the activation dtype plus `f32` fp32 elements per element of the op
(`Op.elems`); every call, kernel or not, costs the host `Host.call_us` of its framework op in
eager mode. An op this table does not know keeps what ops.py says (pytorch: `Op.kernels`
launches, fused: one) so that new ops work before they are described here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from simulator.moment.model import ModelSpec
from simulator.moment.ops import Batch, Dtypes, Op, attention_ops, dense_ops

IMPLEMENTATIONS = ("pytorch", "fused")
HEAVY = frozenset({"linear", "sdpa", "attention"})  # kernels with the GEMM/attention floor (floor_us)


@dataclass(frozen=True)
class Call:
    """One framework call: `op` names it for its host cost ("view" launches nothing)."""

    op: str
    act: float = 0.0        # activation-dtype elements read + written per element of the op
    f32: float = 0.0        # fp32 elements read + written per element of the op
    convert: bool = False   # a .to() between the activation dtype and fp32: a no-op in fp32

    def launches(self, act_bytes: float) -> bool:
        return self.op != "view" and not (self.convert and act_bytes == 4)

    def host_op(self, act_bytes: float) -> str:
        return self.op if self.launches(act_bytes) else "view"


VIEW = Call("view")
_HF_NORM = (Call("to", act=1, f32=1, convert=True), Call("pow", f32=2), Call("mean", f32=1), Call("add"),
            Call("rsqrt"), Call("mul", f32=2), Call("to", act=1, f32=1, convert=True), Call("mul", act=2))
# x * cos + rotate_half(x) * sin on q, then on k: the bytes are per element of q and k together,
# so the first pass carries them all and the second only its kernels and calls
_ROTATE_HALF = (Call("mul", act=2), VIEW, Call("neg", act=1), VIEW, Call("cat", act=2), Call("mul", act=2),
                Call("add", act=3))
_ROTATE_HALF_AGAIN = tuple(Call(c.op) for c in _ROTATE_HALF)

COMPOSITION: dict[str, dict[str, tuple[Call, ...]]] = {
    "pytorch": {
        "embed": (Call("embedding", act=2),),
        "input_norm": _HF_NORM, "post_attn_norm": _HF_NORM, "final_norm": _HF_NORM,
        # the other RMSNorms of some families (q/k norms, Gemma's sublayer-output norms, MLA's)
        "qk_norm": _HF_NORM, "attn_out_norm": _HF_NORM, "ffn_out_norm": _HF_NORM, "q_a_norm": _HF_NORM,
        "kv_a_norm": _HF_NORM,
        "qkv_proj": (Call("linear"),) + (VIEW,) * 7,          # split into q, k, v; view and transpose each
        "rope": _ROTATE_HALF + _ROTATE_HALF_AGAIN,
        "o_proj": (Call("linear"),),
        "attn_residual": (Call("add", act=3),), "ffn_residual": (Call("add", act=3),),
        "ffn_up": (Call("linear"),),
        "ffn_act": (VIEW, Call("silu", act=2), Call("mul", act=3)),  # chunk, SiLU(gate), * up
        "experts_act": (VIEW, Call("silu", act=2), Call("mul", act=3)),
        "shared_act": (VIEW, Call("silu", act=2), Call("mul", act=3)),
        "ffn_down": (Call("linear"),),
        "lm_head": (VIEW, Call("linear"), Call("to", act=1, f32=1, convert=True)),  # last token, logits .float()
        # cache slices, K and V index_copy_, the attended slices, SDPA, the head merge (a view)
        "attention": (VIEW, Call("index_copy_"), VIEW, Call("index_copy_"), VIEW, VIEW, Call("sdpa"), VIEW, VIEW),
        "step_inputs": (Call("arange"), Call("index_select"), Call("index_select")),  # positions, RoPE rows
        "sample": (Call("argmax"), Call("copy")),              # greedy token, read back to the host
    },
    "fused": {
        "embed": (Call("embedding", act=2),),
        # the residual add happens inside the next norm: read x and the residual, write both
        "input_norm": (Call("fused_add_rms_norm", act=4),), "post_attn_norm": (Call("fused_add_rms_norm", act=4),),
        "final_norm": (Call("fused_add_rms_norm", act=4),),
        "qk_norm": (Call("rms_norm", act=2),), "attn_out_norm": (Call("rms_norm", act=2),),
        "ffn_out_norm": (Call("rms_norm", act=2),), "q_a_norm": (Call("rms_norm", act=2),),
        "kv_a_norm": (Call("rms_norm", act=2),),
        "attn_residual": (), "ffn_residual": (),
        "qkv_proj": (Call("linear"), VIEW, VIEW, VIEW),
        "rope": (Call("rotary_embedding", act=2),),            # q and k rotated in place
        "o_proj": (Call("linear"),),
        "ffn_up": (Call("linear"),),
        "ffn_act": (Call("silu_and_mul", act=3),),
        "experts_act": (Call("silu_and_mul", act=3),), "shared_act": (Call("silu_and_mul", act=3),),
        "ffn_down": (Call("linear"),),
        "lm_head": (Call("linear"), Call("to", act=1, f32=1, convert=True)),  # the sampler's fp32 logits
        "attention": (Call("reshape_and_cache"), VIEW, VIEW, Call("attention")),
        "step_inputs": (Call("arange"), Call("index_select"), Call("index_select")),
        "sample": (Call("argmax"), Call("copy")),
    },
}
# the kernel writing the new keys and values into the cache, by its bandwidth category
KV_WRITE = {"pytorch": "index_copy", "fused": "kv_write"}


def check(impl: str) -> None:
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"kernels {impl!r}; allowed: {', '.join(IMPLEMENTATIONS)}")


def calls(impl: str, name: str, op: Op | None = None) -> tuple[Call, ...]:
    """The calls of op `name` (or of an attention/step part: "attention", "step_inputs", "sample")."""
    table = COMPOSITION[impl]
    if name.startswith("attn_") and name not in table:
        name = "attention"
    if name in table:
        return table[name]
    n = (op.kernels if op is not None else 1) if impl == "pytorch" else 1
    return (Call(name),) * n


def compose(ops: list[Op], impl: str, act_bytes: float) -> list[Op]:
    """The ops as `impl` runs them: each element-wise op with its kernels' bytes, every op with
    its kernel count (`Op.kernels`, per layer), a GEMM's epilogue kernels (the logits' cast) as
    an element-wise op of their own. Attention ops keep ops.py's numbers (priced by
    hwmodels.attention; its cache-write kernels by `kv_write_ops`)."""
    check(impl)
    out: list[Op] = []
    for op in ops:
        cs = calls(impl, op.name, op)
        launched = [c for c in cs if c.launches(act_bytes)]
        if op.kind == "gemm":
            main = [c for c in launched if c.op in HEAVY]
            out.append(replace(op, kernels=max(len(main), 1)))
            epi = [c for c in launched if c.op not in HEAVY]
            if epi:
                per = sum(c.act * act_bytes + c.f32 * 4.0 for c in epi)
                out.append(Op(f"{op.name}_epilogue", op.category, "stream", 0.0, op.elems * per * op.layers,
                              op.layers, 0.0, kernels=len(epi), elems=op.elems))
        elif op.name in ("ffn_act", "experts_act", "shared_act") and op.kernels == 1:  # a plain MLP's activation
            out.append(replace(op, kernels=1, m=op.m if impl == "fused" else 0.0))
        elif op.kind == "stream" and op.name in COMPOSITION[impl]:
            if not launched:
                continue  # e.g. a residual add fused into the next norm
            per = sum(c.act * act_bytes + c.f32 * 4.0 for c in launched)
            m = op.m if impl == "fused" else 0.0  # one block per token: the fused kernels only
            out.append(replace(op, bytes=op.elems * per * op.layers, kernels=len(launched), m=m))
        elif op.kind.startswith("attn_"):
            out.append(replace(op, kernels=sum(1 for c in launched if c.op in HEAVY)))
        else:
            out.append(replace(op, kernels=max(len(launched), 1) if launched else op.kernels))
    return out


def kv_write(impl: str) -> tuple[str, int]:
    """The kernels writing one layer's new keys and values into the cache: their bandwidth
    category and how many they are (pytorch: an index_copy_ each for K and V; fused: one)."""
    check(impl)
    return KV_WRITE[impl], sum(1 for c in calls(impl, "attention") if c.launches(2.0) and c.op not in HEAVY)


def host_calls(model: ModelSpec, impl: str, dt: Dtypes, tp: int = 1, pp: int = 1, ep: int = 1) -> dict[str, int]:
    """Framework calls of one eager step by op ("view" for those that launch nothing): the
    embedding, every layer's ops, the final norm and logits, the step's inputs and sampling."""
    check(impl)
    from hwmodels.spec import DTYPE_BYTES

    a = DTYPE_BYTES[dt.act]
    ops = dense_ops(model, 1, 1, dt, tp, pp, ep) + attention_ops(model, Batch(1, 1, 0, 0, 0, 0), dt, tp, pp)
    out: dict[str, int] = {}
    parts = [(calls(impl, o.name, o), o.layers) for o in ops] + [(calls(impl, "step_inputs"), 1),
                                                                  (calls(impl, "sample"), 1)]
    for cs, layers in parts:
        for c in cs:
            k = c.host_op(a)
            out[k] = out.get(k, 0) + layers
    return out


def kernel_count(host: dict[str, int]) -> int:
    """Kernels launched among `host_calls`."""
    return sum(n for k, n in host.items() if k != "view")


def host_seconds(host: dict[str, int], call_us) -> float:
    """Host time of the calls, given each framework op's cost per call (`Host.call_us`)."""
    return float(np.sum([n * call_us(k) for k, n in host.items()])) * 1e-6


__all__ = ["IMPLEMENTATIONS", "COMPOSITION", "Call", "compose", "calls", "kv_write", "host_calls", "kernel_count",
           "host_seconds", "check", "HEAVY"]
