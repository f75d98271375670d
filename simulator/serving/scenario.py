"""The scenario YAML of `momentsim run`: the one description of a serving experiment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodels.errors import from_validation, load_mapping

MAX_TOKENS = 10_000_000  # tokens of one request: the longest context of any released model (Llama 4 Scout)
MAX_REQUESTS = 100_000_000
MAX_SEED = 2**63 - 1
MAX_SLO_MS = 1e9  # about 11.6 days


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


Length = Annotated[Fixed | Uniform | Lognormal | FromTrace, Field(discriminator="dist")]


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
        return self


class Prefix(Strict):
    """Shared prompt prefixes (system prompts, multi-turn chat): prefix caching matters."""

    groups: int = Field(default=1, ge=1, le=1_000_000, description="distinct shared prefixes")
    length: int = Field(gt=0, le=MAX_TOKENS, description="tokens of each shared prefix (part of the prompt)")
    fraction: float = Field(default=1.0, ge=0, le=1, description="share of requests that carry one")


class Workload(Strict):
    num_requests: int = Field(default=1000, gt=0, le=MAX_REQUESTS)
    arrival: Arrival = Arrival(process="burst")
    prompt_len: Length = Fixed(dist="fixed", value=512)
    output_len: Length = Fixed(dist="fixed", value=128)
    prefix: Prefix | None = None


class Serving(Strict):
    scheduler: Literal["static", "continuous", "chunked"] = "continuous"
    max_batch_size: int = Field(default=64, gt=0, le=65536)
    max_batched_tokens: int = Field(default=8192, gt=0, le=1_048_576)
    tp: int = Field(default=1, ge=1, le=1024)
    pp: int = Field(default=1, ge=1, le=1024)
    replicas: int = Field(default=1, ge=1, le=100_000)
    mode: Literal["graph", "eager"] = "graph"
    router: Literal["round_robin", "least_outstanding"] = "round_robin"
    block_size: int = Field(default=16, gt=0, le=1024, description="KV-cache block in tokens")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="share of memory for weights+KV")
    activation_reserve_gb: float = Field(default=1.0, ge=0, le=100_000, description="kept free for activations")
    preemption: Literal["recompute", "swap"] = "recompute"
    prefix_caching: bool = False
    weight_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8", "int4"] = "bf16"
    act_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    kv_dtype: Literal["fp32", "bf16", "fp16", "fp8", "int8"] = "bf16"
    max_queue: int | None = Field(default=None, gt=0, le=MAX_REQUESTS, description="reject arrivals beyond this queue length")
    async_scheduling: bool = Field(
        default=False, description="the host prepares the next step while the device runs this one (vLLM v1)"
    )


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
    arr = d.get("workload", {}).get("arrival") if isinstance(d.get("workload"), dict) else None
    if isinstance(arr, dict) and isinstance(arr.get("path"), str) and not Path(arr["path"]).is_absolute():
        arr["path"] = str(base_dir / arr["path"])
    return d


def scenario_from_dict(data: dict[str, Any], where: str, base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping; relative paths in it are relative to base_dir (its file's folder)."""
    try:
        return Scenario.model_validate(data if base_dir is None else resolve_paths(data, base_dir))
    except ValidationError as e:
        raise from_validation(e, where) from None


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    return scenario_from_dict(load_mapping(p), str(p), p.parent)
