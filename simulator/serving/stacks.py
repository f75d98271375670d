"""Serving-stack presets: `serving.stack: vllm | vllm-v1 | vllm-v0 | sglang | sglang-v0.4 |
sglang-v0.3 | trtllm | trtllm-v0` sets the scheduler and its limits, memory, KV block size,
prefix caching, CUDA-graph capture sizes, overlap and the stack's own overheads as that stack
defaults them, and any field the scenario sets overrides the preset.

Each preset is data (`Stack`, validated at import): a dict of Serving fields whose values are
plain or `Tiers`, the step functions the stacks compute at start-up from the GPU's memory, the
tensor-parallel size or the model's context length, plus a `Graphs` rule for the capture sizes.
Every default names its source: a key of calibration/data/serving-stacks.md ([V063] is vLLM
0.6.3.post1's source, and so on; "(inferred)" where a value is worked out from them). A preset
with a `base` starts from that preset.

The overheads (`Overheads`: per request on the way in and out, per step and per sequence in a
step) are host-CPU work, fitted to the published runs of calibration/data/serving-public (see
OVERHEAD_FIT and README "Serving stacks"); they are times on the reference host (the hosts of
those runs) and scale as 1 / host.speed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hwmodels.spec import Hardware
from simulator.moment.model import ModelSpec
from simulator.serving.scenario import STACK_NAMES, Serving

GIB = 2**30
Value = int | float | str | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tiers(_Strict):
    """A default that a stack computes from the deployment: the value of the last tier whose
    threshold is <= the quantity `by` (tiers in increasing order). A value "same" is the
    quantity itself. `devices` (device-name substring -> value) is checked first; `offline`
    replaces the tiers for an offline engine (serving.api_server false), as vLLM picks its
    limits by usage context."""

    by: Literal["memory_gib", "tp", "max_model_len"]
    tiers: list[tuple[float, Value]]
    offline: list[tuple[float, Value]] | None = None
    devices: dict[str, Value] = {}

    def pick(self, x: float, device: str, api_server: bool) -> Value:
        for key, v in self.devices.items():
            if key.lower() in device.lower():
                return v
        tiers = self.tiers if api_server or self.offline is None else self.offline
        out: Value = tiers[0][1]
        for threshold, v in tiers:
            if x >= threshold:
                out = v
        return x if out == "same" else out


class Graphs(_Strict):
    """Captured CUDA-graph sizes: `sizes` and each (start, stop, step) of `ranges` (stop included),
    kept up to the largest size: the smallest of `max`, `per_seq` x max_batch_size and the
    fields named in `limit_by`, rounded up to `round_to`; then `add` (fields, or "max") that are
    within it."""

    sizes: list[int] = []
    ranges: list[tuple[int, int, int]] = []
    max: int | Tiers | None = None
    per_seq: float | None = None
    limit_by: list[Literal["max_batch_size", "max_batched_tokens"]] = []
    round_to: int = 1
    add: list[Literal["max", "max_batch_size", "max_batched_tokens"]] = []

    def build(self, sv: dict[str, Any], pick) -> list[int]:
        caps = [] if self.max is None else [pick(self.max) if isinstance(self.max, Tiers) else self.max]
        if self.per_seq is not None:
            caps.append(int(self.per_seq * sv["max_batch_size"]))
        caps += [sv[f] for f in self.limit_by]
        top = int(min(caps))
        top = -(-top // self.round_to) * self.round_to
        out = {s for s in self.sizes if s <= top}
        for a, b, step in self.ranges:
            out.update(s for s in range(a, b + 1, step) if s <= top)
        for f in self.add:
            v = top if f == "max" else sv[f]
            if v <= top:
                out.add(int(v))
        return sorted(out)


class Stack(_Strict):
    """One preset: what it is, the Serving fields it sets and their sources."""

    about: str
    base: str | None = None
    defaults: dict[str, Value | Tiers | dict[str, float]] = {}
    graphs: Graphs | None = None
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _every_default_has_a_source(self) -> Stack:
        missing = [k for k in [*self.defaults, *(["cuda_graph_sizes"] if self.graphs else [])] if k not in self.sources]
        if missing:
            raise ValueError(f"defaults without a source: {', '.join(missing)}")
        bad = [k for k in self.defaults if k not in Serving.model_fields]
        if bad:
            raise ValueError(f"not serving fields: {', '.join(bad)}")
        return self


# -- the stacks' own host work, fitted to calibration/data/serving-public (README "Serving stacks") -----
# (request_in_ms + request_out_ms, step_us, step_seq_us) on the reference host. How each was obtained:
OVERHEAD_FIT = {
    "vllm-v0": "step_us fitted to R52 (batch-8 latency of vLLM ~0.6 offline on an H100: 1,150 us with "
               "step_seq_us fixed); step_seq_us 45 us from [BLOG060] (scheduling 29 % of a loaded step against "
               "the GPU's 38 %: 0.76 x a 15 ms batch-256 step / 256); request time as vllm-v1's (the same "
               "OpenAI server in its own process, [V063] cli_args.py L182: no V0 row measures it)",
    "vllm-v1": "request_in_ms + request_out_ms fitted to R43's mean and median TTFT (vLLM 0.11, H100, 4 clients: "
               "50.2 ms, split evenly); step_us to its median TPOT (685 us); step_seq_us 5 us estimated (V1 "
               "prepares inputs vectorised; [BLOGV1]: 1.7x V0's throughput)",
    "sglang-v0.3": "step_us and step_seq_us fitted together to R34's and R36's median TPOT (SGLang 0.3, A100, "
                   "4 and 8 req/s, 10 and 28 running: 925 us + 121 us per sequence; no overlap hides them); "
                   "request time as sglang",
    "sglang": "request_in_ms + request_out_ms fitted to R34's and R36's median TTFT and R44's mean and median "
              "(11.1 ms, split evenly); step_us as 0.3's; step_seq_us 5 us, inferred from [BLOGSGL04] (overlap "
              "gains 1.1x: the host was about a tenth of a loaded step), so it never outlasts the device",
    "trtllm": "request_in_ms + request_out_ms fitted to R45's mean and median TTFT (TensorRT-LLM 1.2, H100: "
              "34.2 ms, split evenly); step_us 300 and step_seq_us 5 estimated: the overlap scheduler hides "
              "them, so no row measures them",
    "trtllm-v0": "estimates: the C++ runtime's step (100 us + 1 us per sequence; R01-R12 are GPU-bound and do "
                 "not see it) and, for Triton's HTTP front end, trtllm's request time",
}

PRESETS_RAW: dict[str, dict[str, Any]] = {
    # ---------------------------------------------------------------- vLLM V0 (0.6.x), [V063]
    "vllm-v0": {
        "about": "vLLM V0 engine, 0.6.x (read at 0.6.3.post1, checked against 0.6.0 and 0.6.6.post1)",
        "defaults": {
            # chunked prefill turns itself on above a 32k context (CUDA, no sliding window, ...); with it
            # max_num_batched_tokens is 512, without it max(max_model_len, 2048)
            "scheduler": Tiers(by="max_model_len", tiers=[(0, "continuous"), (32769, "chunked")]),
            "max_batched_tokens": Tiers(by="max_model_len", tiers=[(0, 2048), (2048, "same"), (32769, 512)]),
            "max_batch_size": 256,
            "block_size": 16,
            "gpu_memory_utilization": 0.90,
            "prefix_caching": False,
            "preemption": "recompute",
            "num_scheduler_steps": 1,
            "async_scheduling": False,
            "mode": "graph",
            "kernels": "fused",
            "cuda_graph_padding": True,
            "graph_mixed": False,
            "graph_piecewise": False,
            "guaranteed_no_evict": False,
            "memory_fraction_of": "total",
            "overheads": {"request_in_ms": 25.1, "request_out_ms": 25.1, "step_us": 1150.0, "step_seq_us": 45.0},
        },
        "graphs": {"sizes": [1, 2, 4], "ranges": [(8, 8192, 8)], "limit_by": ["max_batch_size"], "round_to": 8},
        "sources": {
            "scheduler": "[V063] arg_utils.py L939-964 (chunked prefill off unless max_model_len > 32768)",
            "max_batched_tokens": "[V063] config.py SchedulerConfig L942+, constants L33-34",
            "max_batch_size": "[V063] engine/arg_utils.py L115 (max_num_seqs 256)",
            "block_size": "[V063] arg_utils.py L107",
            "gpu_memory_utilization": "[V063] arg_utils.py L111-113",
            "prefix_caching": "[V063] arg_utils.py L108",
            "preemption": "[V063] core/scheduler.py _preempt L1454-1480 (recompute for one sequence)",
            "num_scheduler_steps": "[V063] arg_utils.py L147-148",
            "async_scheduling": "[V063] scheduling and input preparation are serial; async output processing "
                                "(config.py verify_async_output_proc) hides the output work, so it is not in "
                                "the step overhead",
            "mode": "[V063] enforce_eager False: CUDA graphs for decode",
            "kernels": "vLLM's fused kernels (simulator/moment/kernels.py)",
            "cuda_graph_sizes": "[V060]/[V063] worker/model_runner.py L67-76, _get_max_graph_batch_size "
                                "([1,2,4] + multiples of 8 up to max_num_seqs)",
            "cuda_graph_padding": "[V063] model_runner.py _get_graph_batch_size",
            "graph_mixed": "[V063] _use_captured_graph L709-722: decode-only batches",
            "graph_piecewise": "[V063] whole-model graphs",
            "guaranteed_no_evict": "[V063] blocks allocated as tokens come, preemption when they run out",
            "memory_fraction_of": "[V063] gpu_memory_utilization is a share of the total",
            "overheads": OVERHEAD_FIT["vllm-v0"],
        },
    },
    # ---------------------------------------------------------------- vLLM V1 before async scheduling, [V085]
    "vllm-v1": {
        "about": "vLLM V1 engine as first made the default (read at 0.8.5): chunked prefill, prefix caching, "
                 "piecewise CUDA graphs, no async scheduling",
        "defaults": {
            "scheduler": "chunked",
            "max_batch_size": Tiers(by="memory_gib", tiers=[(0, 256), (70, 1024)]),
            "max_batched_tokens": Tiers(by="memory_gib", tiers=[(0, 2048), (70, 8192)],
                                        offline=[(0, 8192), (70, 16384)]),
            "block_size": 16,
            "gpu_memory_utilization": 0.90,
            "prefix_caching": True,
            "preemption": "recompute",
            "num_scheduler_steps": 1,
            "async_scheduling": False,
            "mode": "graph",
            "kernels": "fused",
            "cuda_graph_padding": True,
            "graph_mixed": True,
            "graph_piecewise": True,
            "guaranteed_no_evict": False,
            "memory_fraction_of": "total",
            "overheads": {"request_in_ms": 25.1, "request_out_ms": 25.1, "step_us": 685.0, "step_seq_us": 5.0},
        },
        "graphs": {"sizes": [1, 2, 4], "ranges": [(8, 512, 8)], "limit_by": ["max_batched_tokens"]},
        "sources": {
            "scheduler": "[V085] arg_utils.py L1568 (V1 always uses chunked prefills)",
            "max_batch_size": "[V085] arg_utils.py _set_default_args_v1 L1565-1625 (>= 70 GiB: 1024)",
            "max_batched_tokens": "[V085] _set_default_args_v1 (API server 8192 / 2048, LLM class 16384 / 8192)",
            "block_size": "[V085] platforms/cuda.py L142",
            "gpu_memory_utilization": "[V085] config.py CacheConfig",
            "prefix_caching": "[V085] L1571-1573",
            "preemption": "[V085] v1/core/sched/scheduler.py L220-235 (recompute only)",
            "num_scheduler_steps": "[V085] not supported in V1",
            "async_scheduling": "[V085] no async scheduling (it appears later: [V033])",
            "mode": "[V085] CUDA graphs on",
            "kernels": "vLLM's fused kernels",
            "cuda_graph_sizes": "[V085] config.py _set_cudagraph_sizes ([1,2,4] + multiples of 8 up to 512, in "
                                "tokens, at most max_num_batched_tokens)",
            "cuda_graph_padding": "[V085] v1/worker/gpu_model_runner.py L1022-1038",
            "graph_mixed": "[V085] piecewise graphs count tokens of mixed batches too",
            "graph_piecewise": "[V085] piecewise graphs: attention runs between the pieces",
            "guaranteed_no_evict": "[V085] allocate as tokens come, preempt when blocks run out",
            "memory_fraction_of": "[V085] a share of the total",
            "overheads": OVERHEAD_FIT["vllm-v1"],
        },
    },
    # ---------------------------------------------------------------- vLLM, newest read (0.33.0), [V033]
    "vllm": {
        "about": "vLLM V1 as of 0.33.0 (newest read): async scheduling, full decode graphs, GPU tiers",
        "base": "vllm-v1",
        "defaults": {
            "max_batch_size": Tiers(by="memory_gib", tiers=[(0, 256), (70, 1024)], devices={"A100": 256}),
            "max_batched_tokens": Tiers(by="memory_gib", tiers=[(0, 2048), (70, 8192), (160, 16384)],
                                        offline=[(0, 8192), (70, 16384)], devices={"A100": 2048}),
            "gpu_memory_utilization": 0.92,
            "async_scheduling": True,
            "graph_piecewise": False,
        },
        "graphs": {"sizes": [1, 2, 4], "ranges": [(8, 248, 8), (256, 1024, 16)], "max": 512, "per_seq": 2,
                   "limit_by": ["max_batched_tokens"], "add": ["max_batched_tokens", "max_batch_size"]},
        "sources": {
            "max_batch_size": "[V033] arg_utils.py get_batch_defaults L2940-3039 (A100 and GB10 kept at 256)",
            "max_batched_tokens": "[V033] get_batch_defaults (>= 160 GiB 16384; >= 70 GiB 8192 API server; A100 "
                                  "2048)",
            "gpu_memory_utilization": "[V033] config/cache.py L215",
            "async_scheduling": "[V033] config/vllm.py L1640-1720 (None resolves to True)",
            "graph_piecewise": "[V033] FULL_AND_PIECEWISE (-O2): full graphs for decode-only batches",
            "cuda_graph_sizes": "[V033] config/vllm.py L2398-2600 ([1,2,4] + 8..248 by 8 + 256..M by 16, "
                                "M = min(2 x max_num_seqs, 512, max_num_batched_tokens))",
        },
    },
    # ---------------------------------------------------------------- SGLang 0.4.0, [S040]
    "sglang-v0.4": {
        "about": "SGLang 0.4.0: prefill batches first (chunked), radix cache, overlap scheduler",
        "defaults": {
            "scheduler": "prefill_first",
            "max_batched_tokens": Tiers(by="memory_gib", tiers=[(0, 2048), (24.4, 8192)]),
            "max_batch_size": 2048,
            "block_size": 1,
            "gpu_memory_utilization": Tiers(by="tp", tiers=[(1, 0.88), (2, 0.87), (4, 0.85), (8, 0.81),
                                                             (16, 0.79)]),
            "activation_reserve_gb": 0.0,
            "prefix_caching": True,
            "preemption": "recompute",
            "num_scheduler_steps": 1,
            "async_scheduling": True,
            "mode": "graph",
            "kernels": "fused",
            "cuda_graph_padding": True,
            "graph_mixed": False,
            "graph_piecewise": False,
            "guaranteed_no_evict": False,
            "memory_fraction_of": "total",
            "overheads": {"request_in_ms": 5.55, "request_out_ms": 5.55, "step_us": 925.0, "step_seq_us": 5.0},
        },
        "graphs": {"sizes": [1, 2, 4], "ranges": [(8, 160, 8)],
                   "max": Tiers(by="memory_gib", tiers=[(0, 8), (24.4, 160)]), "limit_by": ["max_batch_size"]},
        "sources": {
            "scheduler": "[S040] managers/scheduler.py get_next_batch_to_run L768-794 (prefill first, "
                         "enable_mixed_chunk False)",
            "max_batched_tokens": "[S040] server_args.py __post_init__ (chunked_prefill_size 2048 below "
                                  "25,000 MB, else 8192)",
            "max_batch_size": "[S040] tp_worker.py L92-98 (inferred: min(tokens // 2, clamp(tokens / context "
                              "x 512, 2048, 4096)) is 2048-4096 here; the KV cache binds first)",
            "block_size": "[S040] token-level pool (inferred: 1)",
            "gpu_memory_utilization": "[S040] server_args.py mem_fraction_static by tp",
            "activation_reserve_gb": "[S040] model_runner.py profile_max_num_token: the fraction is weights + KV",
            "prefix_caching": "[S040] disable_radix_cache False",
            "preemption": "[S040] schedule_batch.py retract_decode L818-900",
            "num_scheduler_steps": "[S040] num_continuous_decode_steps 1",
            "async_scheduling": "[S040] scheduler.py L113, L176-183 (overlap on); [BLOGSGL04]",
            "mode": "[S040] CUDA graphs on",
            "kernels": "SGLang's fused kernels (flashinfer)",
            "cuda_graph_sizes": "[S040] cuda_graph_runner.py L128-138 ([1,2,4] + 8..160 by 8; max_bs 8 below 25 GB)",
            "cuda_graph_padding": "[S040] cuda_graph_runner.py can_run L214-239",
            "graph_mixed": "[S040] decode graphs only",
            "graph_piecewise": "[S040] whole-model graphs",
            "guaranteed_no_evict": "[S040] admission by new_token_ratio, retraction when KV runs out",
            "memory_fraction_of": "[S040] mem_fraction_static is a share of the total",
            "overheads": OVERHEAD_FIT["sglang"],
        },
    },
    "sglang-v0.3": {
        "about": "SGLang 0.3.x: as 0.4.0 without the overlap scheduler (new and on by default in 0.4)",
        "base": "sglang-v0.4",
        "defaults": {"async_scheduling": False,
                     "overheads": {"request_in_ms": 5.55, "request_out_ms": 5.55, "step_us": 925.0,
                                   "step_seq_us": 121.0}},
        "sources": {"async_scheduling": "[BLOGSGL04] the overlap scheduler arrived in 0.4 (other 0.3 defaults "
                                        "are 0.4.0's: 0.3 was not read)",
                    "overheads": OVERHEAD_FIT["sglang-v0.3"]},
    },
    # ---------------------------------------------------------------- SGLang, newest read (0.5.23), [S0523]
    "sglang": {
        "about": "SGLang 0.5.x (read at 0.5.23): GPU-memory tiers for the prefill chunk and the decode graphs",
        "base": "sglang-v0.4",
        "defaults": {
            "max_batched_tokens": Tiers(by="memory_gib", tiers=[(0, 2048), (20, 4096), (60, 8192), (160, 16384)]),
            "gpu_memory_utilization": Tiers(by="memory_gib", tiers=[(0, 0.85), (60, 0.83), (90, 0.906),
                                                                    (160, 0.857)]),
        },
        "graphs": {"sizes": [1, 2, 4, 8, 12], "ranges": [(16, 256, 8), (272, 496, 16), (512, 4096, 32)],
                   "max": Tiers(by="memory_gib", tiers=[(0, 8), (20, 48), (35, 32), (60, 256), (160, 512)]),
                   "limit_by": ["max_batch_size"], "add": ["max"]},
        "sources": {
            "max_batched_tokens": "[S0523] arg_groups/memory_hook.py handle_gpu_memory_settings L47-190 "
                                  "(chunked_prefill_size: < 20 GB 2048, < 60 GB 4096, < 160 GB 8192, else 16384)",
            "gpu_memory_utilization": "[S0523] memory_hook.py L320-356 (inferred at tp 1 with these tiers' chunk and "
                                      "graph sizes: (memory - reserved) / memory, reserved = 512 MB + 1.5 x chunk "
                                      "MB + 128 MB + 2 MB per decode graph batch, at least 10 GB above 60 GB)",
            "cuda_graph_sizes": "[S0523] cuda_graph_hook.py L480-532, cuda_graph_config.py L119-153 (max_bs by "
                                "memory at tp < 4)",
        },
    },
    # ---------------------------------------------------------------- TensorRT-LLM 1.x, PyTorch backend
    "trtllm": {
        "about": "TensorRT-LLM 1.x trtllm-serve (PyTorch backend): in-flight batching of whole prompts, "
                 "GUARANTEED_NO_EVICT, overlap scheduler, CUDA graphs for batches 1-31, 32, 64, 128",
        "defaults": {
            "scheduler": "mixed",
            "max_batch_size": 2048,
            "max_batched_tokens": 8192,
            "block_size": 32,
            "gpu_memory_utilization": 0.90,
            "memory_fraction_of": "free",
            "guaranteed_no_evict": True,
            "prefix_caching": True,
            "preemption": "recompute",
            "num_scheduler_steps": 1,
            "async_scheduling": True,
            "mode": "graph",
            "kernels": "fused",
            "cuda_graph_padding": False,
            "graph_mixed": False,
            "graph_piecewise": False,
            "overheads": {"request_in_ms": 17.1, "request_out_ms": 17.1, "step_us": 300.0, "step_seq_us": 5.0},
        },
        "graphs": {"ranges": [(1, 32, 1)], "sizes": [64, 128], "max": 128},
        "sources": {
            "scheduler": "[TRT-args10] enable_chunked_prefill False; [TRT-serve]",
            "max_batch_size": "[TRT-build] BuildConfig max_batch_size 2048 ([TRT-args10] copies it)",
            "max_batched_tokens": "[TRT-build] BuildConfig max_num_tokens 8192",
            "block_size": "[DOC-TRT-KV] tokens_per_block 32",
            "gpu_memory_utilization": "[TRT-serve] free_gpu_memory_fraction 0.9; [DOC-TRT-KVEX]",
            "memory_fraction_of": "[TRT-args10] the fraction is of the memory free after loading",
            "guaranteed_no_evict": "[TRT-args10] SchedulerConfig capacity_scheduler_policy; [DOC-TRT-flags]",
            "prefix_caching": "[TRT-args10] KvCacheConfig.enable_block_reuse True (momentsim does not share "
                              "prefixes under guaranteed_no_evict)",
            "preemption": "[DOC-TRT-flags] nothing is preempted under GUARANTEED_NO_EVICT",
            "num_scheduler_steps": "[TRT-args10] one step per scheduling",
            "async_scheduling": "[TRT-args10] disable_overlap_scheduler False; [DOC-TRT-overlap]",
            "mode": "[TRT-args10] cuda_graph_config on by default",
            "kernels": "TensorRT-LLM's fused kernels (attention backend TRTLLM)",
            "cuda_graph_sizes": "[TRT-args10] CudaGraphConfig max_batch_size 128: 1..31, 32, 64, 128",
            "cuda_graph_padding": "[TRT-args10] enable_padding False: other sizes run eager",
            "graph_mixed": "[TRT-args10] generation-only batches",
            "graph_piecewise": "[TRT-args10] whole-model graphs",
            "overheads": OVERHEAD_FIT["trtllm"],
        },
    },
    # ---------------------------------------------------------------- TensorRT-LLM 0.x, C++ runtime
    "trtllm-v0": {
        "about": "TensorRT-LLM 0.x with TensorRT engines and the C++ runtime (gptManagerBenchmark, Triton): a "
                 "step is one engine enqueue",
        "base": "trtllm",
        "defaults": {
            "async_scheduling": False,
            "prefix_caching": False,
            "overheads": {"request_in_ms": 17.1, "request_out_ms": 17.1, "step_us": 100.0, "step_seq_us": 1.0},
        },
        "graphs": None,
        "sources": {
            "async_scheduling": "(inferred) the overlap scheduler belongs to the PyTorch backend [DOC-TRT-overlap]",
            "prefix_caching": "(inferred) KV reuse is a flag of the 0.x batch manager",
            "cuda_graph_sizes": "(inferred) a TensorRT engine runs a step as one enqueue: every batch size is "
                                "costed as one launch",
            "overheads": OVERHEAD_FIT["trtllm-v0"],
        },
    },
}


def _flatten(name: str) -> Stack:
    """A preset with its bases' defaults, graphs and sources folded in."""
    raw = PRESETS_RAW[name]
    if raw.get("base") is None:
        return Stack.model_validate(raw)
    base = _flatten(raw["base"])
    merged = {
        "about": raw["about"],
        "defaults": {**base.defaults, **raw.get("defaults", {})},
        "graphs": raw["graphs"] if "graphs" in raw else base.graphs,
        "sources": {**base.sources, **raw.get("sources", {})},
    }
    return Stack.model_validate(merged)


PRESETS: dict[str, Stack] = {name: _flatten(name) for name in PRESETS_RAW}
assert set(PRESETS) == set(STACK_NAMES), "scenario.STACK_NAMES lists the presets"


def resolve(sv: Serving, hw: Hardware, model: ModelSpec) -> Serving:
    """The serving settings a run uses: the stack's defaults, computed for this hardware, tp and
    model, under every field the scenario set (Serving.model_fields_set; in `overheads` field by
    field). Without a stack, `sv` itself."""
    if sv.stack is None:
        return sv
    st = PRESETS[sv.stack]
    given = sv.model_dump(include=sv.model_fields_set)
    max_model_len = sv.max_model_len or model.max_position_embeddings
    quantity = {"memory_gib": hw.device.memory_bytes / GIB, "tp": sv.tp, "max_model_len": max_model_len}

    def pick(v: Any) -> Any:
        return v.pick(quantity[v.by], hw.device.name, sv.api_server) if isinstance(v, Tiers) else v

    out: dict[str, Any] = {k: pick(v) for k, v in st.defaults.items()}
    if "overheads" in given:  # a partial overheads mapping overrides the preset's field by field
        given["overheads"] = {**out.get("overheads", {}), **sv.overheads.model_dump(
            include=sv.overheads.model_fields_set)}
    out.update(given)
    if st.graphs is not None and "cuda_graph_sizes" not in given:
        out["cuda_graph_sizes"] = st.graphs.build(out | {"max_batch_size": out.get("max_batch_size", sv.max_batch_size),
                                                         "max_batched_tokens": out.get("max_batched_tokens",
                                                                                       sv.max_batched_tokens)}, pick)
    return Serving.model_validate(out)


def describe(name: str, hw: Hardware, model: ModelSpec, tp: int = 1, api_server: bool = True) -> dict[str, Any]:
    """A preset's values for this deployment, each with its source (for docs and `--json` users)."""
    sv = resolve(Serving(stack=name, tp=tp, api_server=api_server), hw, model)
    st = PRESETS[name]
    keys = [*st.defaults, *(["cuda_graph_sizes"] if st.graphs else [])]
    return {k: {"value": getattr(sv, k) if k != "overheads" else sv.overheads.model_dump(), "source": st.sources[k]}
            for k in keys}


__all__ = ["PRESETS", "Stack", "Tiers", "Graphs", "resolve", "describe", "OVERHEAD_FIT"]
