"""Measurement records as the fit prices them: what each microbenchmark ran, kernel by kernel.

A record (calibration.fit.record) says what was timed and how long it took. The microbenchmarks
run each op the way the reference decoder runs it, so an element-wise record is plain PyTorch's
composition of that op (simulator.moment.kernels "pytorch": eight kernels for an RMSNorm) and an
attention record is two index_copy_ cache writes plus SDPA. `prepare` fills in what the fit
needs from that: the composition's bytes and kernel count, the attention shapes, whether the
record carries a timer's fixed overhead (CUDA events), the framework op a dispatch record
measured. Records from older momentsim runs (the committed H200 run) lack some of these fields;
they are derived from the model each record names, so saved raw measurements can be refitted.
Records of other origins (the published Vidur per-op times) pass through as they are.
"""

from __future__ import annotations

import re
from typing import Any

from simulator.moment import kernels as kn
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Dtypes, dense_ops

Record = dict[str, Any]
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
TINY = ModelSpec(name="tiny-llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=256)
# a scaled-down Llama for CPU runs: llama-3.2-1b's layout at half the width
MINI = ModelSpec(name="mini-llama", hidden_size=1024, num_hidden_layers=4, num_attention_heads=16,
                 num_key_value_heads=4, head_dim=64, intermediate_size=4096, vocab_size=32000)
BUILT_IN = {"tiny-llama": TINY, "mini-llama": MINI}
# the op of simulator.moment.ops that each element-wise microbenchmark category runs
STREAM_OPS = {"norm": "input_norm", "rope": "rope", "ffn_act": "ffn_act", "residual_add": "attn_residual",
              "embed": "embed"}
# the two views of the dispatch microbenchmark "reshape_copy": transpose, then a reshape that is a view
VIEW_PAIRS = {"reshape_copy": 2}
_DISPATCH = re.compile(r"eager dispatch: \d+ x (\S+) on")
_ATTN = re.compile(r"h=(\d+)/(\d+)x(\d+) b=(\d+) (?:len|ctx)=(\d+)")


def model_of(name: str) -> ModelSpec | None:
    """The model a record names: a built-in calibration model or a preset (None if unknown)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    try:
        return load_model(name)
    except Exception:  # noqa: BLE001  # an unknown name: the record keeps what it says
        return None


def _one_layer(spec: ModelSpec) -> ModelSpec:
    return spec.model_copy(update={"num_hidden_layers": 1})


def is_momentsim(r: Record) -> bool:
    """Measured by momentsim's own microbenchmarks (which run the plain-PyTorch composition)."""
    return r.get("impl") == "pytorch" or str(r.get("source", "")).startswith("microbench ")


def _stream(r: Record) -> Record:
    """An element-wise record as plain PyTorch ran it: the composition's bytes and kernels."""
    name = STREAM_OPS.get(r.get("category", ""))
    spec = model_of(r.get("model", ""))
    tokens = r.get("tokens") or r.get("m")
    if name is None or spec is None or not tokens:
        return r
    a = DTYPE_BYTES.get(r.get("dtype", "bf16"), 2.0)
    dt = Dtypes(r["dtype"], r["dtype"], r["dtype"])
    op = next(o for o in dense_ops(_one_layer(spec), float(tokens), 0.0, dt) if o.name == name)
    (c,) = kn.compose([op], "pytorch", a)
    return {**r, "bytes": float(c.bytes), "launches": int(c.kernels), "m": 0.0, "elems": float(c.elems),
            "impl": "pytorch"}


def _attention(r: Record) -> Record:
    """An attention record's shape (heads, KV heads, head size, batch, length) and composition."""
    out = dict(r)
    if not all(k in r for k in ("heads", "kv_heads", "head_dim", "batch", "len")):
        m = _ATTN.search(str(r.get("source", "")))
        if m:
            h, k, d, b, n = (int(v) for v in m.groups())
        else:
            spec = model_of(r.get("model", ""))
            if spec is None or "batch" not in r or "len" not in r:
                return r
            h, k, d, b, n = spec.num_attention_heads, spec.kv_heads, spec.hd, int(r["batch"]), int(r["len"])
        out.update(heads=h, kv_heads=k, head_dim=d, batch=b, len=n)
    out["impl"] = "pytorch"
    return out


def prepare(records: list[Record]) -> list[Record]:
    """Records with the fields the fit prices them by (see the module docstring). Idempotent."""
    out = []
    for r in records:
        r = dict(r)
        src = str(r.get("source", ""))
        if r["op"] == "stream" and src.startswith("kernel floor: a CUDA graph"):
            r["op"] = "graph_floor"  # older runs filed the graph's kernel floor as a stream record
        elif is_momentsim(r) and r["op"] == "stream" and r.get("fit", True) is not False:
            r = _stream(r)
        elif is_momentsim(r) and r["op"] in ("attn_prefill", "attn_decode"):
            r = _attention(r)
        if r["op"] == "dispatch" and "name" not in r:
            m = _DISPATCH.search(src)
            if m:
                r["name"] = m.group(1)
        if "timer" not in r:
            r["timer"] = src.startswith("microbench cuda") and r["op"] in ("gemm", "stream", "attn_prefill",
                                                                             "attn_decode")
        out.append(r)
    return out


def attention_shapes(r: Record) -> tuple[float, float, float, float, float, float]:
    """(sequences, new tokens, pairs, cached, keys, causal) of a prepared attention record."""
    b, n = float(r["batch"]), float(r["len"])
    if r["op"] == "attn_prefill":
        return b, b * n, b * n * (n + 1) / 2, 0.0, 0.0, 1.0
    return b, b, 0.0, b * n, b * (n + 1), 0.0


__all__ = ["prepare", "model_of", "is_momentsim", "attention_shapes", "TINY", "MINI", "BUILT_IN", "STREAM_OPS",
           "VIEW_PAIRS"]
