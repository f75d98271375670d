"""pydantic descriptions of devices, nodes and clusters: the one schema of a hardware YAML.

Peak throughput is derived, never stated: clock x compute units x FLOPs per cycle per unit,
so a what-if part changes one physical number and the peaks follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8", "int4", "fp4")


@dataclass(frozen=True)
class Format:
    """How weights or KV are stored: bytes per element with their scales, the tensor-core dtype
    that consumes them directly where a device has it, and the vector ops per weight that
    dequantise them to the activation dtype where it does not (per weight per 128-row tile
    of a GEMM: each tile of rows unpacks the weights again; estimates, not measured)."""

    bytes: float
    tensor: str | None = None   # None: 16/32-bit (runs in the activation dtype) or weight-only
    dequant_ops: float = 0.0


FORMATS: dict[str, Format] = {
    "fp32": Format(4.0), "tf32": Format(4.0), "bf16": Format(2.0), "fp16": Format(2.0),
    "fp8": Format(1.0, "fp8", 2.0),                     # e4m3, one scale per tensor or channel
    "fp8-block": Format(1.0 + 4 / 128**2, "fp8", 2.0),  # + an fp32 scale per 128x128 block (DeepSeek-V3)
    "int8": Format(1.0, None, 2.0),                     # weight-only: dequantised to the activation dtype
    "int4": Format(0.5, None, 3.0),                     # packed nibbles (scales not counted)
    "int4-awq": Format(0.5 + 2.5 / 128, None, 3.0),     # + fp16 scale and 4-bit zero per group of 128
    "int4-gptq": Format(0.5 + 2.5 / 128, None, 3.0),    # the same storage as AWQ (g_idx is per row: negligible)
    "nvfp4": Format(0.5 + 1 / 16, "fp4", 2.0),          # e2m1 + an e4m3 scale per 16 (+ one fp32 per tensor)
    "mxfp4": Format(0.5 + 1 / 32, "fp4", 2.0),          # e2m1 + an e8m0 scale per 32 (OCP MX)
}
DTYPE_BYTES = {k: f.bytes for k, f in FORMATS.items()}
WEIGHT_FORMATS = ("fp32", "bf16", "fp16", "fp8", "fp8-block", "int8", "int4", "int4-awq", "int4-gptq", "nvfp4",
                  "mxfp4")
KV_FORMATS = ("fp32", "bf16", "fp16", "fp8", "int8", "nvfp4", "mxfp4")


# Categories that element-wise efficiency dicts may name: a step's (simulator.moment.ops) and
# the KV-cache writes' (simulator.moment.kernels.KV_WRITE); a misspelt one is an error, not ignored.
ELEMENTWISE = ("embed", "norm", "qkv_proj", "rope", "attention", "o_proj", "ffn_up", "ffn_act", "ffn_down",
               "residual_add", "lm_head", "comm", "index_copy", "kv_write")
MAX_US = 1e6  # one second: no per-kernel or per-step cost on any real part comes near

Fraction = Annotated[float, Field(gt=0, le=1)]
Rate = Annotated[float, Field(gt=0, le=1e6)]
Gain = Annotated[float, Field(ge=0, le=1000)]
FlopsPerCycle = Annotated[float, Field(ge=0, le=1e7)]
Micros = Annotated[float, Field(ge=0, le=MAX_US)]


class Strict(BaseModel):
    """No unknown fields; numbers are numbers (not booleans or strings) and finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Power(Strict):
    """A device's electrical power (simulator/moment/power.py): `idle_w` with nothing running, plus
    a share of `tdp_w - idle_w` that grows with how busy the tensor units and the memory are in a
    moment, at most `tdp_w` (the board's power limit)."""

    tdp_w: float = Field(gt=0, le=10_000, description="maximum board power in W (datasheet TDP or TBP)")
    idle_w: float = Field(ge=0, le=10_000, description="W drawn with nothing running (clocks idle, memory refreshed)")
    compute_share: float = Field(
        default=1.0, ge=0, le=4,
        description="share of tdp_w - idle_w drawn while the tensor units run at a large GEMM's rate "
        "(efficiency.gemm_compute of peak); 1: a large GEMM runs at the power limit. An estimate until "
        "calibrated",
    )
    memory_share: float = Field(
        default=0.5, ge=0, le=4,
        description="share of tdp_w - idle_w drawn while memory streams at a weight stream's rate "
        "(efficiency.gemm_memory of bandwidth): DRAM and on-chip data movement. An estimate until calibrated",
    )

    @model_validator(mode="after")
    def _order(self) -> Power:
        if self.idle_w >= self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w:g}) must be below tdp_w ({self.tdp_w:g})")
        return self


class Device(Strict):
    """One accelerator or CPU socket."""

    name: str
    kind: Literal["gpu", "cpu", "tpu"] = "gpu"
    clock_ghz: float = Field(gt=0, le=10, description="clock at which the FLOP rates hold")
    compute_units: int = Field(gt=0, le=1_000_000, description="SMs, CUs, TensorCores or CPU cores")
    flops_per_cycle: dict[str, FlopsPerCycle] = Field(
        description="dense FLOPs per cycle per compute unit, by dtype (fp32, tf32, bf16, fp16, fp8, int8, int4, fp4)"
    )
    memory_gb: float = Field(gt=0, le=100_000, description="device memory in GB (1e9 bytes)")
    memory_bw_gbps: float = Field(gt=0, le=1e6, description="memory bandwidth in GB/s")
    cache_mb: float = Field(default=0.0, ge=0, le=1e6, description="last-level cache in MB")
    kernel_launch_us: float = Field(
        default=0.0, ge=0, le=MAX_US,
        description="shortest kernel outside a CUDA graph: launch plus tail on the device; every eager kernel "
        "lasts at least this (the fitted floors of efficiency apply above it; 0: no bound beyond them)",
    )
    power: Power | None = Field(default=None, description="electrical power; none: energy is not reported")

    @model_validator(mode="after")
    def _dtypes(self) -> Device:
        bad = [k for k in self.flops_per_cycle if k not in DTYPES]
        if bad:
            raise ValueError(f"unknown dtype {bad[0]!r} in flops_per_cycle; allowed: {', '.join(DTYPES)}")
        if not any(v > 0 for v in self.flops_per_cycle.values()):
            raise ValueError("flops_per_cycle needs at least one dtype with a rate > 0")
        return self

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a dtype; a dtype without units falls back to the next wider one."""
        for d in _fallback(dtype):
            fpc = self.flops_per_cycle.get(d, 0.0)
            if fpc > 0:
                return self.clock_ghz * 1e9 * self.compute_units * fpc
        return self.clock_ghz * 1e9 * self.compute_units * max(self.flops_per_cycle.values())

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def bandwidth(self) -> float:
        return self.memory_bw_gbps * 1e9


def gemm_dtype(fmt: str, act: str, device: Device) -> tuple[str, bool]:
    """The dtype a GEMM on weights stored as `fmt` runs in on `device`, and whether the weights
    are dequantised on the way (fp8/fp4 where the part has no such tensor units, int4 always)."""
    f = FORMATS[fmt]
    if f.tensor is not None and device.flops_per_cycle.get(f.tensor, 0.0) > 0:
        return f.tensor, False
    return act, f.dequant_ops > 0


def _fallback(dtype: str) -> tuple[str, ...]:
    # fp8/int8/int4 weights dequantise to bf16 GEMMs where no narrow tensor units exist; fp4
    # without fp4 units runs as weight-only (bf16 activations), not on fp8 units
    return {
        "fp4": ("fp4", "bf16", "fp16", "fp32"),
        "int4": ("int4", "int8", "fp8", "bf16", "fp16", "fp32"),
        "int8": ("int8", "fp8", "bf16", "fp16", "fp32"),
        "fp8": ("fp8", "bf16", "fp16", "fp32"),
        "fp16": ("fp16", "bf16", "fp32"),
        "bf16": ("bf16", "fp16", "fp32"),
        "tf32": ("tf32", "fp32"),
    }.get(dtype, (dtype, "fp32"))


# a call in the reference decoder's layer costs the host this many views beyond its tight loop:
# measured with calibration.microbench.sequence_records on a 2-core EPYC (fp32, one thread:
# framework only), median of 8 runs 1.12-1.25 (README, "The host")
SEQUENCE_PER_VIEW = 1.2
# PyTorch's at::internal::GRAIN_SIZE: an element-wise kernel over fewer elements runs on one thread
PARALLEL_GRAIN = 32768


class Host(Strict):
    """The host CPU's side of a step: what PyTorch and the server cost per call, kernel and step.

    Eager mode issues every framework call from the host: a call that launches a kernel costs
    its tight-loop dispatch (`op_dispatch_us` for that op, else `dispatch_us`); a call that
    launches nothing (a view, a slice, a no-op `.to()`) costs `view_us`. Both are measured as
    loops of one tiny op, which keep the code paths hot; a real model's varied sequence of calls
    with real layouts (4-D broadcasts, strided views) costs `sequence_us` more per call
    (simulator/moment/kernels.py counts the calls of each implementation).
    """

    name: str = "x86 host"
    dispatch_us: float = Field(default=20.0, ge=0, le=1e6,
                               description="eager: host time to issue one kernel-launching op (tight loop)")
    op_dispatch_us: dict[str, Micros] = Field(
        default_factory=dict,
        description="per framework op (add, mul, pow, mean, rsqrt, neg, cat, silu, linear, index_copy_, "
        "embedding, sdpa, argmax, to, ...): its tight-loop dispatch; absent ops cost dispatch_us",
    )
    view_us: float = Field(default=1.4, ge=0, le=1e6,
                           description="a call that launches no kernel (view, slice, no-op .to()), tight loop")
    sequence_us: float | None = Field(
        default=None, ge=0, le=1e6,
        description="extra host time per call in a model's varied sequence over its tight-loop cost (cold "
        "code paths, real layouts); None: 1.2 x view_us, the ratio measured on a CPU (see README)",
    )
    graph_launch_us: float = Field(default=60.0, ge=0, le=100_000, description="graph mode: one CUDA graph replay")
    step_overhead_us: float = Field(
        default=300.0, ge=0, le=1_000_000, description="per step: scheduling, input preparation, sampling, sync"
    )
    speed: float = Field(
        default=1.0, gt=0, le=100, description="single-thread speed relative to the hosts of the published serving "
        "runs that a serving stack's overheads were fitted on (simulator/serving/stacks.py): a stack's host work "
        "takes 1/speed of its fitted time")

    @model_validator(mode="after")
    def _op_costs(self) -> Host:
        bad = [k for k, v in self.op_dispatch_us.items() if not 0 <= v <= 1e6]
        if bad:
            raise ValueError(f"op_dispatch_us[{bad[0]!r}] must be between 0 and 1e6 us")
        return self

    def call_us(self, op: str) -> float:
        """Host time of one call of framework op `op` ("view" for calls without a kernel) in a model."""
        tight = self.view_us if op == "view" else self.op_dispatch_us.get(op, self.dispatch_us)
        return tight + self.sequence_extra_us

    @property
    def sequence_extra_us(self) -> float:
        return SEQUENCE_PER_VIEW * self.view_us if self.sequence_us is None else self.sequence_us


class Link(Strict):
    name: str = "none"
    bw_gbps: float = Field(gt=0, le=1e6, description="per device, per direction, GB/s")
    latency_us: float = Field(default=5.0, ge=0, le=MAX_US, description="one hop of a collective")


class Efficiency(Strict):
    """Shape of the roofline: how close each kind of kernel gets to peak. Calibration fits these.

    An op takes (t_compute^p + t_memory^p)^(1/p) + floor: a soft maximum, because near the ridge
    point neither unit is fully used (p = 4 fits H100 GEMMs; p -> inf is the bare roofline).
    """

    gemm_compute: float = Field(default=0.74, gt=0, le=1, description="fraction of peak a large GEMM reaches")
    gemm_memory: float = Field(default=0.87, gt=0, le=1, description="fraction of bandwidth a weight stream reaches")
    gemv_memory: float | None = Field(
        default=None, gt=0, le=1,
        description="bandwidth fraction of a one-token GEMM (a matrix-vector product: CPU BLAS takes another "
        "path for it than for a blocked GEMM); None: gemm_memory",
    )
    wide_gemm_n: int | None = Field(
        default=None, gt=0, le=10_000_000,
        description="output width N from which a blocked GEMM of a few rows streams its weights at "
        "wide_gemm_memory instead of gemm_memory (a CPU BLAS's small-M path slows past a panel width: "
        "6 against 10 GB/s at N >= 8192 on a 2-core EPYC); None: no such width",
    )
    wide_gemm_memory: float | None = Field(
        default=None, gt=0, le=1,
        description="bandwidth fraction of a blocked GEMM (more than one row) at least wide_gemm_n wide; "
        "None: gemm_memory",
    )
    gemm_memory_dtype: dict[str, Fraction] = Field(
        default_factory=dict,
        description="per GEMM dtype: the bandwidth fraction its weights stream at, at every row count and "
        "width, where the library takes its own kernel for that dtype (a CPU's bf16 GEMMs run oneDNN's "
        "AVX512-BF16 kernels, 15-20 GB/s on a 2-core EPYC where MKL's fp32 blocked GEMM streams 6-10); "
        "replaces gemm_memory, gemv_memory and wide_gemm_memory for it; absent: those",
    )
    gemm_wave: float = Field(
        default=0.0, ge=0, le=1, description="weight of tile/wave quantisation over compute units (0 = off)"
    )
    attn_prefill_compute: float = Field(
        default=0.85, gt=0, le=1, description="flash attention: fraction of the matrix units' peak in its matmuls")
    attn_decode_memory: float = Field(default=0.70, gt=0, le=1, description="KV-cache read, decode")
    attn_decode_compute: float = Field(default=0.25, gt=0, le=1, description="decode attention's FLOP rate")
    attn_prefill_compute_dtype: dict[str, Fraction] = Field(
        default_factory=dict,
        description="per attention dtype: attn_prefill_compute for it, where the library runs that dtype's "
        "attention on its own path (PyTorch's bf16 SDPA on a CPU computes in fp32 after converting: no faster "
        "than fp32 at 2.4x the peak); absent: attn_prefill_compute",
    )
    attn_decode_compute_dtype: dict[str, Fraction] = Field(
        default_factory=dict,
        description="per attention dtype: attn_decode_compute for it (PyTorch's bf16 decode SDPA on a 2-core "
        "EPYC runs at about 3.5 GFLOP/s, 3-6x slower than fp32's: compute-bound, not a KV stream); absent: "
        "attn_decode_compute",
    )
    attn_decode_seq_us: float = Field(default=0.0, ge=0, le=MAX_US, description="extra per sequence in a decode attention")
    attn_decode_cta_us: float = Field(
        default=0.0, ge=0, le=1000,
        description="decode attention: fixed cost of one (sequence, KV head) work unit (load the queries, "
        "write the output), spread over the compute units",
    )
    attn_decode_ramp_us: float = Field(
        default=0.0, ge=0, le=1000,
        description="decode attention: a memory stream reaches full bandwidth only after a start-up; it adds "
        "ramp x (1 - exp(-t / ramp)) to a stream of t seconds (small streams run at half rate, large ones "
        "pay the ramp once)",
    )
    attn_softmax_cycles: float = Field(
        default=0.0625, ge=0, le=10,
        description="flash attention: cycles per query-key pair per compute unit outside the matrix units "
        "(exp on the special-function unit: 16 per SM per cycle on Ampere/Hopper gives 1/16)",
    )
    attn_tail: float = Field(
        default=0.4, ge=0, le=1,
        description="flash attention prefill: the makespan exceeds total work / units by this share of the "
        "longest tile's work (the last, partly filled wave)",
    )
    graph_floor_us: float | None = Field(
        default=None, ge=0, le=1000,
        description="device time of the shortest kernel inside a CUDA graph (no launch gap between "
        "kernels); None: as in eager mode",
    )
    elementwise_memory: dict[str, Fraction] = Field(
        default_factory=lambda: {"norm": 0.35, "rope": 0.45, "ffn_act": 0.6, "residual_add": 0.9, "embed": 0.2,
                                 "index_copy": 0.25},
        description="fraction of bandwidth per element-wise category",
    )
    elementwise_floor_us: float | None = Field(
        default=None, ge=0, le=MAX_US, description="shortest element-wise kernel (lighter than a GEMM's); None: floor_us"
    )
    elementwise_row_gbps: dict[str, Rate] = Field(
        default_factory=dict,
        description="per category: GB/s at which one thread block streams one token's row, for kernels "
        "that give each token a block (norm, rope, activation); bounds small batches; absent: no bound",
    )
    elementwise_cache_gain: dict[str, Gain] = Field(
        default_factory=dict,
        description="per category: how much faster an element-wise kernel streams when its working set "
        "fits in the last-level cache (time / (1 + gain * min(1, cache / bytes)^4)); absent: 0",
    )
    parallel_us: float = Field(
        default=0.0, ge=0, le=100_000,
        description="CPU: waking the thread pool for an element-wise kernel over at least PARALLEL_GRAIN "
        "elements (PyTorch splits those over its threads) and joining it again, per kernel; 0 on GPUs",
    )
    softmax_p: float = Field(default=4.0, ge=1, le=64)
    floor_us: float = Field(
        default=3.0, ge=0, le=MAX_US,
        description="device time of the shortest kernel (GEMM, attention; element-wise too unless elementwise_floor_us)",
    )
    comm_bw: float = Field(default=0.75, gt=0, le=1, description="fraction of link bandwidth a collective reaches")
    comm_latency_us: float | None = Field(default=None, ge=0, le=MAX_US, description="per ring step; None: the link's latency")
    comm_hops: Literal["ring", "tree"] = Field(
        default="ring",
        description="latency steps of an all-reduce over n devices: ring 2(n-1); tree 2*ceil(log2 n), what NCCL "
        "uses for latency-bound messages (small all-reduces on a DGX H100 cost about the same on 2 and 8 GPUs)",
    )

    @model_validator(mode="after")
    def _categories(self) -> Efficiency:
        for name in ("elementwise_memory", "elementwise_row_gbps", "elementwise_cache_gain"):
            bad = [k for k in getattr(self, name) if k not in ELEMENTWISE]
            if bad:
                raise ValueError(f"unknown category {bad[0]!r} in {name}; allowed: {', '.join(ELEMENTWISE)}")
        for name in ("gemm_memory_dtype", "attn_prefill_compute_dtype", "attn_decode_compute_dtype"):
            bad = [k for k in getattr(self, name) if k not in DTYPES]
            if bad:
                raise ValueError(f"unknown dtype {bad[0]!r} in {name}; allowed: {', '.join(DTYPES)}")
        if (self.wide_gemm_n is None) != (self.wide_gemm_memory is None):
            raise ValueError("wide_gemm_n and wide_gemm_memory go together: give both or neither")
        return self


class Hardware(Strict):
    """A hardware YAML: a device, the host that drives it, its node and cluster."""

    name: str
    description: str = ""
    device: Device
    host: Host = Host()
    devices_per_node: int = Field(default=1, ge=1, le=1024)
    link: Link | None = Field(default=None, description="intra-node link between devices")
    nodes: int = Field(default=1, ge=1, le=100_000)
    network: Link | None = Field(default=None, description="between nodes")
    efficiency: Efficiency = Efficiency()
    price_per_hour: float | None = Field(default=None, ge=0, le=10_000, description="USD per device-hour")
    sources: dict[str, str] = Field(default_factory=dict, description="field -> where the number came from")
    profile: str | None = Field(default=None, description="calibration profile applied, if any")
    efficiency_from: str | None = Field(
        default=None,
        description="a preset whose committed calibration profile supplies the efficiencies and host costs "
        "(a part of the same architecture family: efficiencies are fractions of peak, so they carry over)",
    )

    @property
    def total_devices(self) -> int:
        return self.devices_per_node * self.nodes
