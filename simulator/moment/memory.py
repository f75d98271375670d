"""What fits on a device: weights, KV cache per token, and the tokens of KV left after weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hwmodels.errors import InputError
from hwmodels.spec import Hardware
from simulator.moment.model import ModelSpec
from simulator.moment.ops import Dtypes

GB = 1e9


@dataclass(frozen=True)
class Footprint:
    device_memory_gb: float
    usable_gb: float
    weights_gb: float
    activation_reserve_gb: float
    kv_bytes_per_token: float
    kv_capacity_tokens: int

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def footprint(model: ModelSpec, hw: Hardware, tp: int = 1, pp: int = 1, dt: Dtypes = Dtypes(),
              utilization: float = 0.9, reserve_gb: float = 1.0, ep: int = 1, fraction_of: str = "total",
              extra_weight_bytes: float = 0.0, extra_kv_bytes: float = 0.0) -> Footprint:
    """Per device. The KV capacity is what is left of `utilization` x memory after weights and
    an activation reserve, as vLLM's gpu_memory_utilization does; with fraction_of "free",
    `utilization` x what weights and the reserve leave (TensorRT-LLM's free_gpu_memory_fraction).
    extra_*: what a speculative draft adds per device (its weights, its KV per token beside the
    target's)."""
    mem = hw.device.memory_bytes
    w = model.weight_bytes(dt.weight, tp, pp, ep, dt.experts) + extra_weight_bytes
    kv_tok = model.kv_bytes_per_token(dt.kv, tp, pp) + extra_kv_bytes
    if fraction_of == "free":
        free = utilization * (mem - w - reserve_gb * GB)
        usable = w + reserve_gb * GB + max(free, 0.0)
    else:
        usable = mem * utilization
        free = usable - w - reserve_gb * GB
    cap = int(free // kv_tok) if free > 0 else 0
    return Footprint(mem / GB, usable / GB, w / GB, reserve_gb, kv_tok, cap)


def check_fits(model: ModelSpec, hw: Hardware, tp: int = 1, pp: int = 1, dt: Dtypes = Dtypes(),
               utilization: float = 0.9, reserve_gb: float = 1.0, min_tokens: int = 1,
               where: str = "model", ep: int = 1, fraction_of: str = "total", extra_weight_bytes: float = 0.0,
               extra_kv_bytes: float = 0.0) -> Footprint:
    """Raise a one-line InputError that says what is needed and what would fit."""
    fp = footprint(model, hw, tp, pp, dt, utilization, reserve_gb, ep, fraction_of, extra_weight_bytes,
                   extra_kv_bytes)
    if fp.kv_capacity_tokens >= min_tokens:
        return fp
    need = fp.weights_gb + reserve_gb + min_tokens * fp.kv_bytes_per_token / GB
    hints = []
    for t in (2, 4, 8, 16, 32, 64):
        if t * tp * pp > hw.total_devices or model.num_attention_heads % (t * tp):
            continue
        wider = footprint(model, hw, t * tp, pp, dt, utilization, reserve_gb, t * tp if ep > 1 else 1)
        if wider.kv_capacity_tokens >= min_tokens:
            hints.append(f"tp >= {t * tp}")
            break
    narrow = ("fp8", "nvfp4", "int4") if hw.device.flops_per_cycle.get("fp4", 0) > 0 else ("fp8", "int4")
    for w in narrow:
        if w != dt.weight and footprint(model, hw, tp, pp, Dtypes(w, dt.act, dt.kv), utilization,
                                        reserve_gb, ep).kv_capacity_tokens >= min_tokens:
            hints.append(f"{w} weights")
            break
    fix = f"; would fit with {' or '.join(hints)}" if hints else "; try a larger device"
    raise InputError(
        where, "",
        f"{model.name} needs {need:.1f} GB per device at tp={tp}, pp={pp} ({fp.weights_gb:.1f} GB weights in "
        f"{dt.weight if dt.experts == dt.weight else f'{dt.weight}, experts in {dt.experts}'}) but {hw.name} offers {fp.usable_gb:.1f} GB ({utilization:.0%} of {fp.device_memory_gb:.0f} GB)"
        f"{fix}",
    )
