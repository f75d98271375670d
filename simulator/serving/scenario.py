"""The scenario YAML of `momentsim run`: the one description of a serving experiment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodels.errors import InputError, from_validation, load_mapping
from hwmodels.spec import KV_FORMATS, WEIGHT_FORMATS

MAX_TOKENS = 10_000_000  # tokens of one request: the longest context of any released model (Llama 4 Scout)
MAX_REQUESTS = 100_000_000
MAX_SEED = 2**63 - 1
MAX_SLO_MS = 1e9  # about 11.6 days
MAX_PRIORITY = 1_000_000  # request priorities: 0 (first) .. this
STACK_NAMES = ("vllm", "vllm-v1", "vllm-v0", "sglang", "sglang-v0.4", "sglang-v0.3", "trtllm", "trtllm-v0")
SCHEDULER_NAMES = ("static", "continuous", "chunked", "prefill_first", "mixed")  # schedulers.SCHEDULERS


class Strict(BaseModel):
    """No unknown fields; numbers are numbers (not booleans or strings) and finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Fixed(Strict):
    dist: Literal["fixed"]
    value: int = Field(gt=0, le=MAX_TOKENS)

    def expected(self) -> float | None:
        return float(self.value)


class Uniform(Strict):
    dist: Literal["uniform"]
    low: int = Field(gt=0, le=MAX_TOKENS)
    high: int = Field(gt=0, le=MAX_TOKENS)

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if self.high < self.low:
            raise ValueError("high must be >= low")
        return self

    def expected(self) -> float | None:
        return (self.low + self.high) / 2


class Lognormal(Strict):
    dist: Literal["lognormal"]
    mean: float = Field(ge=1, le=MAX_TOKENS, description="mean length in tokens")
    sigma: float = Field(ge=0, le=5, description="sigma of the log of the length")
    max: int | None = Field(default=None, gt=0, le=MAX_TOKENS, description="clip lengths above this")

    def expected(self) -> float | None:
        """The mean, or the clip when it is lower (an upper bound on the clipped mean)."""
        return float(min(self.mean, self.max)) if self.max else float(self.mean)


class FromTrace(Strict):
    dist: Literal["trace"]

    def expected(self) -> float | None:
        return None  # known only once the trace is read


class Empirical(Strict):
    """Lengths read from a file of measured (prompt, output) pairs, e.g. a benchmark's dataset:
    a CSV with the columns prompt_len,output_len (or a JSONL of such objects). When prompt_len
    and output_len name the same file, each request takes both lengths from one row, so the
    pairs keep their correlation. Rows are drawn without replacement (a shuffle by the seed,
    repeated if more requests than rows), as `vllm bench serve` samples its dataset."""

    dist: Literal["empirical"]
    path: str = Field(max_length=4096, description="CSV (prompt_len,output_len) or JSONL file, relative to the "
                      "scenario file")

    def expected(self) -> float | None:
        return None  # known only once the file is read (which column is asked is not known here)


Length = Annotated[Fixed | Uniform | Lognormal | FromTrace | Empirical, Field(discriminator="dist")]


class Arrival(Strict):
    process: Literal["poisson", "gamma", "burst", "trace"] = "poisson"
    rate: float | None = Field(default=None, ge=1e-6, le=1e9, description="requests per second")
    cv: float = Field(default=1.0, ge=0.01, le=100, description="gamma: coefficient of variation of gaps")
    path: str | None = Field(default=None, description="trace: CSV or JSONL file")
    time_scale: float = Field(default=1.0, ge=1e-6, le=1e6, description="trace: multiply arrival times")

    @model_validator(mode="after")
    def _need(self) -> Arrival:
        if self.process in ("poisson", "gamma") and self.rate is None:
            raise ValueError(f"process {self.process} needs a rate (requests per second)")
        if self.process == "trace" and not self.path:
            raise ValueError("process trace needs a path to a CSV or JSONL trace")
        # a field the process never reads is a mistake, not a setting (a rate under a trace, a
        # file under poisson arrivals): refused rather than ignored
        if self.path is not None and self.process != "trace":
            raise ValueError(f"path: process {self.process} reads no file; set process: trace to replay it")
        if self.rate is not None and self.process not in ("poisson", "gamma"):
            raise ValueError(f"rate: process {self.process} takes no rate ("
                             + ("its times come from the trace; time_scale stretches them)" if self.process == "trace"
                                else "every request arrives at 0 s)"))
        if self.cv != 1.0 and self.process != "gamma":
            raise ValueError(f"cv: only process gamma has a coefficient of variation, not {self.process}")
        if self.time_scale != 1.0 and self.process != "trace":
            raise ValueError(f"time_scale: only process trace has times to scale, not {self.process}")
        return self


class Prefix(Strict):
    """Shared prompt prefixes (system prompts, multi-turn chat): prefix caching matters."""

    groups: int = Field(default=1, ge=1, le=1_000_000, description="distinct shared prefixes")
    length: int = Field(gt=0, le=MAX_TOKENS, description="tokens of each shared prefix (part of the prompt)")
    fraction: float = Field(default=1.0, ge=0, le=1, description="share of requests that carry one")


class ClassSlo(Strict):
    """Per-request bounds of one request class (its goodput); unset ones fall back to the scenario's slo."""

    ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    e2e_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)


class RequestClass(Strict):
    """A kind of request (interactive chat, batch summarisation, ...): its share of the arrivals,
    its priority, and optionally its own lengths and SLO."""

    name: str = Field(min_length=1, max_length=64)
    share: float = Field(gt=0, le=1, description="share of the requests in this class (the shares sum to 1)")
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY, description="0 is served first; larger numbers later "
                          "(with serving.queue: priority)")
    prompt_len: Length | None = Field(default=None, description="this class's prompt lengths; none: the workload's")
    output_len: Length | None = Field(default=None, description="this class's output lengths; none: the workload's")
    slo: ClassSlo | None = None


class Workload(Strict):
    num_requests: int = Field(default=1000, gt=0, le=MAX_REQUESTS)
    arrival: Arrival = Arrival(process="burst")
    prompt_len: Length = Fixed(dist="fixed", value=512)
    output_len: Length = Fixed(dist="fixed", value=128)
    prefix: Prefix | None = None
    classes: list[RequestClass] | None = Field(default=None, min_length=1, max_length=64, description=(
        "request classes, each request drawn into one by share; a trace may instead carry a priority column"))

    concurrency: int | None = Field(
        default=None, gt=0, le=1_000_000,
        description="clients as `vllm bench serve --max-concurrency N` runs them: at most N requests in flight, "
        "a client sending its next request when its last one ends (arrival burst: a closed loop of N clients; "
        "poisson/gamma/trace: each request is sent at its arrival time or when a client frees, whichever is later)")
    think_ms: float = Field(default=0.0, ge=0, le=3.6e6,
                            description="with concurrency: a client's pause between a response and its next request")

    @model_validator(mode="after")
    def _shares(self) -> Workload:
        if self.classes:
            total = sum(c.share for c in self.classes)
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"classes: the shares sum to {total:g}; they must sum to 1")
            names = [c.name for c in self.classes]
            if len(set(names)) < len(names):
                raise ValueError("classes: each class needs its own name")
        return self


class KVOffload(Strict):
    """A CPU-memory tier for KV blocks (simulator/serving/offload.py): swapped-out sequences and
    prefixes the device cache evicts (as LMCache's CPU backend)."""

    cpu_gb: float = Field(gt=0, le=100_000, description="host memory for KV blocks per replica, GB")
    pcie_gbps: float = Field(default=25.0, gt=0, le=10_000, description=(
        "host<->device copy bandwidth of each device, GB/s (PCIe 4/5 x16 reaches about 25); also sets swaps'"))


class Speculative(Strict):
    """Speculative decoding (simulator/moment/speculative.py): each step a draft proposes k tokens
    per sequence and one target pass of k + 1 tokens verifies them."""

    method: Literal["draft_model", "heads"] = Field(description=(
        "draft_model: a separate small model (draft_model); heads: draft heads on the target's hidden states "
        "(EAGLE, MTP) of head_layers target layers"))
    draft_model: str | None = Field(default=None, description="draft_model: a model preset or config path")
    head_layers: float = Field(default=1.0, gt=0, le=16, description=(
        "heads: the head's size in target layers (EAGLE, EAGLE-3 and DeepSeek's MTP: 1; a lighter head: a fraction)"))
    k: int = Field(ge=1, le=16, description="tokens proposed per sequence per step")
    acceptance: Annotated[float, Field(ge=0, le=1)] | list[Annotated[float, Field(ge=0, le=1)]] = Field(description=(
        "alpha, the chance a proposed token is accepted (0..1), or one per position j: the chance it is "
        "accepted given the ones before it were; a step yields (1 - alpha^(k+1)) / (1 - alpha) tokens on average"))

    @model_validator(mode="after")
    def _consistent(self) -> Speculative:
        if isinstance(self.acceptance, list) and len(self.acceptance) != self.k:
            raise ValueError(f"acceptance lists one rate per proposed token: {self.k} for k={self.k}, "
                             f"got {len(self.acceptance)}")
        if self.method == "draft_model" and not self.draft_model:
            raise ValueError("method draft_model needs draft_model: a model preset or config path")
        return self


class PoolSpec(Strict):
    """One pool of a disaggregated deployment: what differs from the scenario's serving settings
    (unset fields keep them)."""

    hardware: str | None = Field(default=None, description="preset or path; none: the scenario's hardware")
    tp: int | None = Field(default=None, ge=1, le=1024)
    pp: int | None = Field(default=None, ge=1, le=1024)
    replicas: int | None = Field(default=None, ge=1, le=100_000)
    scheduler: Literal[SCHEDULER_NAMES] | None = None  # type: ignore[valid-type]
    max_batch_size: int | None = Field(default=None, gt=0, le=65536)
    max_batched_tokens: int | None = Field(default=None, gt=0, le=1_048_576)


class KVTransferSpec(Strict):
    """How a prompt's KV cache moves from its prefill replica to a decode replica."""

    path: Literal["network", "link"] = Field(default="network", description=(
        "network: between nodes (the prefill hardware's network: one NIC per device); link: within a node "
        "(its device link, NVLink)"))
    bw_gbps: float | None = Field(default=None, gt=0, le=100_000, description=(
        "per device per direction, GB/s; none: the path's (a device's share of it)"))
    latency_us: float | None = Field(default=None, ge=0, le=1e7, description="per transfer; none: the path's")


class Disaggregated(Strict):
    """Disaggregated prefill and decode (DistServe, Splitwise, vLLM/SGLang P/D, Dynamo): prompts run
    in a prefill pool, their KV moves to a decode pool, which generates the rest."""

    prefill: PoolSpec = PoolSpec()
    decode: PoolSpec = PoolSpec()
    transfer: KVTransferSpec = KVTransferSpec()

    @model_validator(mode="after")
    def _decode_scheduler(self) -> Disaggregated:
        if self.decode.scheduler == "static":
            raise ValueError("decode.scheduler: a decode pool admits requests as their KV arrives: continuous or "
                             "chunked, not static")
        return self


class Overheads(Strict):
    """A serving stack's own host-CPU work (simulator/serving/stacks.py has each stack's values and
    how they were obtained). Times are on the reference host; a host with `speed` s (hwmodels.spec.Host)
    takes 1/s of them. Without a stack every field is 0 and the step overhead is the hardware's
    host.step_overhead_us."""

    request_in_ms: float = Field(default=0.0, ge=0, le=60_000, description="per request, on its way in: HTTP, "
                                 "chat template, tokenisation, hand-over to the engine (api_server only); each "
                                 "request's is drawn uniformly on [0, 2 x this]")
    request_out_ms: float = Field(default=0.0, ge=0, le=60_000, description="per token delivered, on its way out: "
                                  "hand-back, detokenisation, streaming to the client (api_server only); a delay, "
                                  "so it moves TTFT and E2E but not the gaps between tokens")
    step_us: float | None = Field(default=None, ge=0, le=1e6, description="per step the device waits for: "
                                  "scheduling, input preparation, sampling, output processing; None: the "
                                  "hardware's host.step_overhead_us")
    step_seq_us: float = Field(default=0.0, ge=0, le=1e5, description="per sequence in a step, added to step_us "
                               "(the scheduler's and sampler's per-request work)")


class Serving(Strict):
    stack: Literal[STACK_NAMES] | None = Field(  # type: ignore[valid-type]
        default=None, description="a serving stack's defaults (simulator/serving/stacks.py): scheduler, limits, "
        "memory, CUDA graphs, overlap and overheads; any field set here overrides the preset")
    scheduler: Literal[SCHEDULER_NAMES] = "continuous"  # type: ignore[valid-type]
    max_batch_size: int = Field(default=64, gt=0, le=65536)
    max_batched_tokens: int = Field(default=8192, gt=0, le=1_048_576)
    tp: int = Field(default=1, ge=1, le=1024)
    pp: int = Field(default=1, ge=1, le=1024)
    replicas: int = Field(default=1, ge=1, le=100_000)
    mode: Literal["graph", "eager"] = "graph"
    kernels: Literal["pytorch", "fused"] = Field(
        default="fused",
        description="the kernels each op launches: fused (a serving stack: fused add+norm, RoPE, paged attention, "
        "SiLU*mul) or pytorch (plain eager PyTorch, nothing fused); simulator/moment/kernels.py",
    )
    router: Literal["round_robin", "least_outstanding"] = "round_robin"
    block_size: int = Field(default=16, gt=0, le=1024, description="KV-cache block in tokens")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="share of memory for weights+KV")
    activation_reserve_gb: float = Field(default=1.0, ge=0, le=100_000, description="kept free for activations")
    preemption: Literal["recompute", "swap"] = "recompute"
    prefix_caching: bool = False
    weight_dtype: Literal[WEIGHT_FORMATS] | None = Field(  # type: ignore[valid-type]
        default=None, description="every linear layer's weights; none: the checkpoint's own format (its "
        "quantization_config: fp8-block for DeepSeek-V3, mxfp4 experts for gpt-oss), else bf16")
    act_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    kv_dtype: Literal[KV_FORMATS] = "bf16"  # type: ignore[valid-type]
    ep: int = Field(default=1, ge=1, le=1024, description="expert parallelism: 1 (experts split like the rest "
                    "over tp) or equal to tp (each device holds E/tp whole experts; all-to-all dispatch/combine)")
    moe_imbalance: float = Field(default=1.0, ge=1.0, le=64.0, description="with ep > 1: the busiest device's "
                                 "routed tokens over the mean from skewed expert popularity (1: uniform; the "
                                 "spread of random routing in small batches is added on top)")
    max_queue: int | None = Field(default=None, gt=0, le=MAX_REQUESTS, description="reject arrivals beyond this queue length")
    kv_offload: KVOffload | None = Field(default=None, description="a CPU-memory tier under the KV cache")
    speculative: Speculative | None = Field(default=None, description="speculative decoding")
    disaggregated: Disaggregated | None = Field(default=None, description="separate prefill and decode pools")
    queue: Literal["fcfs", "priority", "shortest_first"] = Field(
        default="fcfs", description="the waiting queue's order: fcfs (arrival), priority (the request's class "
        "priority, 0 first, then arrival) or shortest_first (prompt + output tokens, known in advance: an oracle)")
    priority_preemption: bool = Field(
        default=False, description="with queue: priority, a waiting request that lacks KV blocks or a batch seat "
        "preempts running ones of a lower priority (a larger number), newest first; KV pressure preempts the "
        "lowest priority first too")
    async_scheduling: bool = Field(
        default=False, description="the host prepares the next step while the device runs this one (vLLM's "
        "async scheduling, SGLang's and TensorRT-LLM's overlap schedulers)"
    )
    cuda_graph_sizes: list[Annotated[int, Field(gt=0, le=1_048_576)]] | None = Field(
        default=None, max_length=4096, description="with mode graph: the batch sizes captured as CUDA graphs "
        "(decode sequences; tokens for graph_mixed steps); a smaller batch is padded to the next size, a larger "
        "one runs eager; None: every step runs as one graph")
    cuda_graph_padding: bool = Field(default=True, description="pad a batch to the next captured size; false: "
                                     "only batches of exactly a captured size use a graph (TensorRT-LLM)")
    graph_mixed: bool = Field(default=False, description="steps with prefill tokens also run captured graphs, "
                              "piecewise around attention (vLLM V1); false: they run eager")
    graph_piecewise: bool = Field(default=False, description="decode steps run piecewise graphs too (vLLM V1 "
                                  "before full decode graphs): a replay per layer plus attention's eager calls")
    num_scheduler_steps: int = Field(default=1, ge=1, le=1024, description="vLLM V0 multi-step scheduling: a "
                                     "decode batch runs this many steps with one scheduling, admitting nobody in "
                                     "between, and streams their tokens at the end")
    guaranteed_no_evict: bool = Field(default=False, description="admission reserves KV for prompt and whole "
                                      "output (TensorRT-LLM's GUARANTEED_NO_EVICT): nothing is ever preempted")
    memory_fraction_of: Literal["total", "free"] = Field(
        default="total", description="gpu_memory_utilization is a share of the device's memory for weights + KV "
        "(vLLM, SGLang) or of the memory left free after the weights, for KV (TensorRT-LLM)")
    max_model_len: int | None = Field(default=None, gt=0, le=MAX_TOKENS, description="longest prompt + output "
                                      "served (longer requests are rejected); None: the model's context length")
    api_server: bool = Field(default=True, description="requests come through the stack's HTTP server (its "
                             "request_in_ms/request_out_ms); false: an offline engine (vLLM's LLM class, "
                             "gptManagerBenchmark)")
    overheads: Overheads = Overheads()

    @model_validator(mode="after")
    def _together(self) -> Serving:
        if self.priority_preemption and self.queue != "priority":
            raise ValueError("priority_preemption needs queue: priority")
        if self.priority_preemption and self.scheduler == "static":
            raise ValueError("priority_preemption needs a scheduler that preempts: continuous or chunked")
        if self.priority_preemption and self.guaranteed_no_evict:
            raise ValueError("priority_preemption evicts running requests and guaranteed_no_evict never does: "
                             "set one of them false")
        if self.disaggregated is not None and self.disaggregated.decode.scheduler is None \
                and self.scheduler == "static":
            raise ValueError("disaggregated: the decode pool needs scheduler continuous or chunked "
                             "(set disaggregated.decode.scheduler)")
        return self


def pool_serving(serving: Serving, spec: PoolSpec) -> Serving:
    """The serving settings of one pool of a disaggregated deployment."""
    update = {k: v for k, v in spec.model_dump(exclude={"hardware"}).items() if v is not None}
    return serving.model_copy(update={**update, "disaggregated": None})


class Slo(Strict):
    ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS, description="per-request TTFT bound (goodput)")
    tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS, description="per-request TPOT bound (goodput)")
    e2e_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    p99_ttft_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)
    p99_tpot_ms: float | None = Field(default=None, gt=0, le=MAX_SLO_MS)


class Scenario(Strict):
    name: str = "scenario"
    description: str = ""
    model: str
    hardware: str
    serving: Serving = Serving()
    workload: Workload = Workload()
    slo: Slo | None = None
    seed: int = Field(default=0, ge=0, le=MAX_SEED)


def local_path(value: Any, base_dir: Path) -> Any:
    """A model or hardware argument that names a file is relative to the file that names it;
    a preset name (no slash, no .json/.yaml ending) or an absolute path stays as it is."""
    if isinstance(value, str) and ("/" in value or value.endswith((".json", ".yaml", ".yml"))) \
            and not Path(value).is_absolute():
        return str(base_dir / value)
    return value


def resolve_paths(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A copy of a raw scenario mapping whose model/hardware/trace paths are relative to base_dir
    made absolute, so the scenario can be used from elsewhere (a sweep's base)."""
    d = json.loads(json.dumps(data))
    for key in ("model", "hardware"):
        if key in d:
            d[key] = local_path(d[key], base_dir)
    sv = d.get("serving") if isinstance(d.get("serving"), dict) else {}
    spec = sv.get("speculative")
    if isinstance(spec, dict) and "draft_model" in spec:
        spec["draft_model"] = local_path(spec["draft_model"], base_dir)
    dis = sv.get("disaggregated")
    for role in ("prefill", "decode"):
        part = dis.get(role) if isinstance(dis, dict) else None
        if isinstance(part, dict) and "hardware" in part:
            part["hardware"] = local_path(part["hardware"], base_dir)
    wl = d.get("workload") if isinstance(d.get("workload"), dict) else {}
    for part in (wl.get("arrival"), wl.get("prompt_len"), wl.get("output_len")):
        if isinstance(part, dict) and isinstance(part.get("path"), str) and not Path(part["path"]).is_absolute():
            part["path"] = str(base_dir / part["path"])
    return d


def scenario_from_dict(data: dict[str, Any], where: str, base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping; relative paths in it are relative to base_dir (its file's folder)."""
    try:
        return Scenario.model_validate(data if base_dir is None else resolve_paths(data, base_dir))
    except ValidationError as e:
        raise from_validation(e, where) from None


def load_scenario(path: str | Path, sets: Sequence[str] = ()) -> Scenario:
    """Read and validate a scenario file, with `--set` overrides (see apply_sets) applied first."""
    p = Path(path)
    data = apply_sets(load_mapping(p), sets, str(p))
    try:
        return scenario_from_dict(data, str(p), p.parent)
    except InputError as e:
        given = [s.partition("=")[0].strip() for s in sets]
        if any(e.field == g or e.field.startswith(g + ".") or g.startswith(e.field + ".") for g in given):
            raise InputError(e.where, e.field, f"{e.message} (given by --set)") from None
        raise


# -- dotted paths: the fields a sweep varies and `momentsim run --set` overrides -----------------
def _submodels(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field may hold (through Optional, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    if origin is Annotated:
        return _submodels(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        return [m for a in get_args(annotation) for m in _submodels(a)]
    return []


def check_path(path: str, where: str, field_name: str) -> None:
    """Raise a one-line InputError unless `path` names a field of the scenario schema."""
    parts = path.split(".")
    models: list[type[BaseModel]] = [Scenario]
    for i, part in enumerate(parts):
        here = ".".join(parts[:i]) or "the scenario"
        if not models:
            raise InputError(where, field_name, f"{here} is a value and has no field {part!r}")
        fields: dict[str, Any] = {}
        for m in models:
            fields.update(m.model_fields)
        if part not in fields:
            raise InputError(where, field_name, f"unknown field {part!r} in {here}; allowed: {', '.join(fields)}")
        models = _submodels(fields[part].annotation)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in nested dicts, creating the mappings on the way."""
    parts = path.split(".")
    cur = data
    for part in parts[:-1]:
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value


PATH_FIELDS = ("model", "hardware", "workload.arrival.path", "workload.prompt_len.path", "workload.output_len.path",
               "serving.speculative.draft_model", "serving.disaggregated.prefill.hardware",
               "serving.disaggregated.decode.hardware")  # values that name files


def apply_sets(data: dict[str, Any], sets: Sequence[str], where: str) -> dict[str, Any]:
    """`--set FIELD=VALUE` overrides on a raw scenario mapping, as if written in the file: FIELD
    is a dotted path that must name a field of the schema, VALUE is read as YAML (20 is an
    integer, 2.5 a float, true a bool, [1, 2] a list, {dist: fixed, value: 64} a mapping). A
    file named on the command line is relative to the working directory, not to the scenario."""
    for text in sets:
        path, sep, raw = text.partition("=")
        path = path.strip()
        if not sep or not path:
            raise InputError(where, f"--set {text}", "expected FIELD=VALUE, e.g. serving.max_batch_size=128")
        check_path(path, where, f"--set {path}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise InputError(where, f"--set {path}", f"{raw!r} is not a YAML value") from None
        if path in PATH_FIELDS and isinstance(value, str):
            value = local_path(value, Path.cwd()) if not path.endswith(".path") else str(Path(value).absolute())
        elif f"{path}.path" in PATH_FIELDS and isinstance(value, dict) and isinstance(value.get("path"), str):
            value = {**value, "path": str(Path(value["path"]).absolute())}  # a mapping's file, as above
        set_path(data, path, value)
    return data
