"""`momentsim sweep SWEEP.yaml`: run a grid of scenarios and tabulate them.

A sweep is a base scenario plus the fields that vary, named by dotted paths into the scenario
(`serving.tp`, `workload.arrival.rate`, `hardware`, ...):

```yaml
base: llama-3-8b-h100.yaml        # or an inline scenario mapping
grid:                             # the cartesian product of these
  serving.max_batch_size: [32, 128]
  workload.arrival.rate: {from: 2, to: 32, steps: 5, log: true}
points:                           # and/or explicit points (each combined with the grid)
  - {hardware: h100-sxm}
  - {hardware: h200-sxm}
repeats: 1                        # or seeds: [0, 1, 2]
```

Every point is validated as a Scenario before anything runs, so a typo costs a second, not a
half-finished sweep. Points run in parallel (local processes or Ray); each finished point is
appended to OUT/points.jsonl and fsync'd at once, keyed by a hash of its full scenario, so an
interrupted sweep loses nothing finished and a rerun only runs what is missing (and what
failed before: a failure may have been a lost worker, and a deterministic one fails fast).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import UnionType
from typing import IO, Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hwmodels.errors import InputError, from_validation, load_mapping, open_regular
from hwmodels.load import load_hardware
from simulator.moment.model import load_model
from simulator.reports.outdir import out_dir
from simulator.reports.progress import Progress
from simulator.serving.scenario import MAX_SEED, Scenario, resolve_paths, scenario_from_dict
from simulator.studies.pareto import pareto_front

Runner = Callable[[Scenario], dict]
MAX_POINTS = 20_000     # points of one sweep: counted before any is built (a grid can be 10^9)
RAY_CONNECT_S = 10.0    # how long --ray ADDRESS may take to answer
MAX_RECORD_BYTES = 16 << 20  # one line of points.jsonl
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # holds hwmodels/ and simulator/ (see code_version)
# swept or fixed inputs that get a short column name in results.csv
SHORT = {
    "model": "model", "hardware": "hardware", "serving.tp": "tp", "serving.pp": "pp",
    "serving.replicas": "replicas", "serving.scheduler": "scheduler",
    "serving.max_batch_size": "max_batch_size", "workload.arrival.rate": "rate", "seed": "seed",
}


# -- the SWEEP.yaml schema -----------------------------------------------------------------------
class Range(BaseModel):
    """`{from, to, steps}`: evenly spaced values, geometric with `log: true`. Integer ends whose
    values all land on integers stay integers (`serving.tp: {from: 1, to: 8, steps: 4, log: true}`
    is 1, 2, 4, 8: a tp of 2.0 would not validate), otherwise values are floats."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True, allow_inf_nan=False)
    from_: int | float = Field(alias="from", ge=-1e15, le=1e15)
    to: int | float = Field(ge=-1e15, le=1e15)
    steps: int = Field(ge=1, le=MAX_POINTS)
    log: bool = False

    @model_validator(mode="after")
    def _positive_for_log(self) -> Range:
        if self.log and (self.from_ <= 0 or self.to <= 0):
            raise ValueError("log: true needs from > 0 and to > 0")
        return self

    def values(self) -> list[int | float]:
        a, b, n = float(self.from_), float(self.to), self.steps
        if n == 1:
            xs = [a]
        elif self.log:
            xs = [a * (b / a) ** (i / (n - 1)) for i in range(n)]
        else:
            xs = [a + (b - a) * i / (n - 1) for i in range(n)]
        if isinstance(self.from_, int) and isinstance(self.to, int) and all(abs(x - round(x)) < 1e-9 for x in xs):
            return [round(x) for x in xs]
        return [float(f"{x:.6g}") for x in xs]  # 6 digits: readable columns, exact enough


class Sweep(BaseModel):
    """The one description of a SWEEP.yaml; its errors are the CLI's one-line messages."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    name: str = "sweep"
    description: str = ""
    base: dict[str, Any] | str = Field(description="a scenario mapping or a path to a scenario YAML")
    grid: dict[str, list[Any] | Range] = Field(default_factory=dict, description="dotted path -> values")
    points: list[dict[str, Any]] = Field(default_factory=list, description="explicit points: dotted path -> value")
    repeats: int = Field(default=1, ge=1, le=10_000, description="run each point with seeds seed, seed+1, ...")
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] | None = Field(
        default=None, description="run each point once per seed")

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, g: dict[str, Any]) -> dict[str, Any]:
        for k, v in g.items():
            if isinstance(v, list) and not v:
                raise ValueError(f"grid.{k}: give at least one value")
        return g

    @model_validator(mode="after")
    def _seeds(self) -> Sweep:
        if self.seeds is not None and self.repeats != 1:
            raise ValueError("give either repeats or seeds, not both")
        if self.seeds is not None and not self.seeds:
            raise ValueError("seeds: give at least one seed")
        return self


@dataclass
class Point:
    """One scenario of the sweep: its index, the values that vary, and its resume key."""

    index: int
    overrides: dict[str, Any]
    scenario: Scenario
    key: str


@dataclass
class SweepResult:
    out: Path
    rows: list[dict[str, Any]]
    swept: list[str]                      # result columns that vary (short names where they exist)
    ran: int = 0
    resumed: int = 0
    wall_s: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def errors(self) -> int:
        return sum(r["status"] == "error" for r in self.rows)


# -- dotted paths ----------------------------------------------------------------------------------
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


def _axes(sw: Sweep) -> tuple[list[str], list[list[Any]], list[int] | None]:
    keys = list(sw.grid)
    values = [g.values() if isinstance(g, Range) else list(g) for g in sw.grid.values()]
    return keys, values, sw.seeds


def count_points(sw: Sweep) -> int:
    """How many points expand() yields, without building them."""
    _, values, seeds = _axes(sw)
    n_seeds = len(seeds) if seeds is not None else sw.repeats
    return len(sw.points or [{}]) * math.prod(len(v) for v in values) * n_seeds


def expand(sw: Sweep, base_seed: int = 0) -> Iterator[dict[str, Any]]:
    """The overrides of every point, one at a time: explicit points x grid product x seeds, in
    that order. `repeats: n` runs seeds base_seed .. base_seed + n - 1; `seeds:` lists them."""
    keys, values, seeds = _axes(sw)
    if seeds is None and sw.repeats > 1:
        seeds = [base_seed + i for i in range(sw.repeats)]
    for p in sw.points or [{}]:
        both = set(p) & set(keys)
        if both:
            raise ValueError(f"{sorted(both)[0]} is set in both grid and points")
        if seeds is not None and ("seed" in p or "seed" in keys):
            raise ValueError("seed is swept and also set by repeats/seeds")
        for combo in itertools.product(*values):
            o = {**p, **dict(zip(keys, combo, strict=True))}
            if seeds is None:
                yield o
            else:
                yield from ({**o, "seed": s} for s in seeds)


# -- loading ---------------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def code_version(root: Path = SOURCE_ROOT) -> str:
    """The version of momentsim and a hash of its simulating code (hwmodels, simulator under
    `root`): a resumed sweep must not reuse results of other code, released or not."""
    h = hashlib.sha256(_version().encode())
    for pkg in ("hwmodels", "simulator"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return f"{_version()}+{h.hexdigest()[:12]}"


def _version() -> str:
    try:
        return importlib.metadata.version("momentsim")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1024)
def _resolved(kind: str, arg: str) -> str:
    """The model or hardware as simulated (presets and `base:` resolved, profiles applied)."""
    spec = load_model(arg) if kind == "model" else load_hardware(arg)
    return spec.model_dump_json()


def file_digest(path: str) -> str:
    """sha256 of a file's bytes, read in chunks (a trace may be large); regular files only."""
    h = hashlib.sha256()
    with open_regular(path, "trace file") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def point_key(sc: Scenario, digests: dict[str, str] | None = None) -> str:
    """A hash of everything that decides the result: the full scenario, the model and the
    hardware as resolved (a changed preset, `base:` or profile reruns the point), the bytes of
    its trace, and the code version. `digests` keeps the traces' hashes across the points of one
    sweep, so a large trace is read once."""
    digests = {} if digests is None else digests
    files: dict[str, str] = {}
    trace = sc.workload.arrival.path if sc.workload.arrival.process == "trace" else None
    if trace:
        if trace not in digests:
            digests[trace] = file_digest(trace)
        files[trace] = digests[trace]
    blob = json.dumps({"v": 2, "code": code_version(), "scenario": sc.model_dump(mode="json"),
                       "model": _resolved("model", sc.model), "hardware": _resolved("hardware", sc.hardware),
                       "files": files}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _fmt(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the base"


def load_sweep(path: str | Path) -> tuple[Sweep, list[Point]]:
    """Read and validate a sweep and every one of its points; any mistake is one InputError."""
    p = Path(path)
    where = str(p)
    try:
        sw = Sweep.model_validate(load_mapping(p))
    except ValidationError as e:
        raise from_validation(e, where) from None
    if isinstance(sw.base, str):
        bp = Path(sw.base) if Path(sw.base).is_absolute() else p.parent / sw.base
        try:
            base = resolve_paths(load_mapping(bp), bp.parent)
        except InputError as e:
            raise InputError(where, "base", str(e)) from None
    else:
        base = sw.base
    for k in sw.grid:
        check_path(k, where, f"grid.{k}")
    for i, pt in enumerate(sw.points):
        for k in pt:
            check_path(k, where, f"points[{i}].{k}")
    n = count_points(sw)
    if n > MAX_POINTS:
        raise InputError(where, "grid/points", f"{n:,} points; at most {MAX_POINTS:,} allowed in one sweep "
                         "(split it, or use fewer values per axis)")
    seed = base.get("seed", 0)
    overrides = expand(sw, seed if isinstance(seed, int) and not isinstance(seed, bool) else 0)
    points: list[Point] = []
    digests: dict[str, str] = {}
    for i in range(n):
        try:
            ov = next(overrides)
        except ValueError as e:
            raise InputError(where, "grid/points", str(e)) from None
        data = json.loads(json.dumps(base))
        for k, v in ov.items():
            set_path(data, k, v)
        try:
            sc = scenario_from_dict(data, where, p.parent)
        except InputError as e:
            raise InputError(where, e.field, f"{e.message} (point {i}: {_fmt(ov)})") from None
        for what, loader in (("model", load_model), ("hardware", load_hardware)):
            try:
                loader(getattr(sc, what))
            except InputError as e:
                raise InputError(where, what, f"{e.message} (point {i}: {_fmt(ov)})") from None
        try:
            key = point_key(sc, digests)
        except InputError as e:
            raise InputError(where, "workload.arrival.path", f"{e} (point {i}: {_fmt(ov)})") from None
        points.append(Point(i, ov, sc, key))
    return sw, points


# -- running ---------------------------------------------------------------------------------------
def _default_runner(sc: Scenario) -> dict:
    """`momentsim run`'s path: the same checks (fit, tp; done by simulate) and the same metrics."""
    from simulator.reports.run import run_scenario

    return run_scenario(sc)


def run_point(sc: Scenario, runner: Runner | None = None) -> dict[str, Any]:
    """Run one scenario; a failure becomes a record (a sweep goes on past a bad point)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rec = {"status": "ok", "metrics": (runner or _default_runner)(sc)}
    except Exception as e:  # noqa: BLE001 - any failure of a point is recorded, not fatal
        rec = {"status": "error", "error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}
    # wall and CPU seconds: on a shared machine the CPU time is what the point really cost
    return {**rec, "elapsed_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}


def read_done(path: Path) -> dict[str, dict[str, Any]]:
    """Finished points of earlier runs; a line torn by a crash, not UTF-8 or not JSON is ignored."""
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    with open_regular(path, "journal (points.jsonl)") as f:
        for line in iter(lambda: f.readline(MAX_RECORD_BYTES + 1), b""):
            try:
                rec = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                continue
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                done[rec["key"]] = rec
    return done


class _Journal:
    """Append-only points.jsonl, each record on disk (fsync) before the next is awaited. The
    file is opened at the first record, so a sweep that finishes nothing writes nothing."""

    def __init__(self, path: Path):
        self.path = path
        self.f: IO[str] | None = None

    def _open(self) -> IO[str]:
        torn = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
        f = self.path.open("a", encoding="utf-8")
        if torn:  # a crash cut the last record short: start ours on a line of its own
            f.write("\n")
        return f

    def add(self, rec: dict[str, Any]) -> None:
        if self.f is None:
            self.f = self._open()
        self.f.write(json.dumps(rec, default=str) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class _Tally:
    """Points finished and failed, drawn as a progress line on a terminal."""

    def __init__(self, total: int, resumed: int, enabled: bool | None = None):
        self.total, self.resumed, self.done, self.errors = total, resumed, 0, 0
        self.bar = Progress("sweep", enabled=enabled, interval=0.0)

    def tick(self, status: str) -> None:
        self.done += 1
        self.errors += status != "ok"
        err = f", {self.errors} failed" if self.errors else ""
        res = f", {self.resumed} resumed" if self.resumed else ""
        self.bar(self.done / max(self.total, 1), f"{self.done}/{self.total} points{err}{res}")

    def close(self) -> None:
        self.bar.close()


def _run_local(todo: list[Point], workers: int, runner: Runner | None,
               record: Callable[[Point, dict[str, Any]], None]) -> None:
    if workers <= 1 or len(todo) <= 1:
        for p in todo:
            record(p, run_point(p.scenario, runner))
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)))
    try:
        futs: dict[Future, Point] = {pool.submit(run_point, p.scenario, runner): p for p in todo}
        pending = set(futs)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                try:
                    rec = f.result()
                except Exception as e:  # noqa: BLE001 - a worker that died (e.g. out of memory)
                    rec = {"status": "error", "error": f"worker failed: {type(e).__name__}: {e}", "elapsed_s": None}
                record(futs[f], rec)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _probe(address: str) -> None:
    """Fail in seconds, with one line, when nothing listens at a HOST:PORT Ray address (ray.init
    would otherwise wait for it far longer than a user would)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        if address != "auto":
            raise InputError("--ray", address, "expected HOST:PORT (or ray://HOST:PORT, auto, or nothing for a local Ray)")
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_CONNECT_S).close()
    except OSError as e:
        raise InputError("--ray", address, f"no Ray cluster answers there ({e.strerror or type(e).__name__}); "
                         "start one with `ray start --head`, or give --ray alone for a local one") from None


def connect_ray(address: str, workers: int | None) -> Callable[[], None]:
    """Start a local Ray ("local") or join the cluster at `address` (within a bounded time);
    returns what ends it (a no-op when Ray was already running)."""
    if address != "local":
        _probe(address)
    try:
        import ray
    except ImportError:
        raise InputError("--ray", address, "ray is not installed; pip install 'momentsim[ray]'") from None
    if ray.is_initialized():
        return lambda: None
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if address == "local":
        if workers:
            kw["num_cpus"] = workers
        ray.init(**kw)  # starts Ray here (in the main thread: its start-up needs it)
        return ray.shutdown
    kw["address"] = address
    failed: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(**kw)
        except Exception as e:  # noqa: BLE001 - reported as one line below
            failed.append(e)

    # something that listens but is not Ray keeps ray.init waiting for ever: give up on it
    t = threading.Thread(target=init, daemon=True)
    t.start()
    t.join(RAY_CONNECT_S * 6)
    if t.is_alive() or failed:
        why = f"{type(failed[0]).__name__}: {failed[0]}" if failed else f"no answer within {RAY_CONNECT_S * 6:.0f} s"
        raise InputError("--ray", address, f"cannot start or join Ray: {why}"[:300])
    return ray.shutdown


def _run_ray(todo: list[Point], runner: Runner | None, record: Callable[[Point, dict[str, Any]], None]) -> None:
    """One Ray task per point, on the Ray that connect_ray joined."""
    import ray

    task = ray.remote(num_cpus=1)(run_point)
    refs = {task.remote(p.scenario, runner): p for p in todo}
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ready:
                try:
                    rec = ray.get(r)
                except Exception as e:  # noqa: BLE001 - a lost worker or node
                    rec = {"status": "error", "error": f"ray task failed: {type(e).__name__}: {e}"[:500],
                           "elapsed_s": None}
                record(refs[r], rec)
    finally:
        for r in pending:
            ray.cancel(r, force=True)


def run_sweep(path: str | Path, out: str | Path | None = None, workers: int | None = None,
              ray_address: str | None = None, runner: Runner | None = None,
              progress: bool | None = None, plots: bool = True) -> SweepResult:
    """Validate every point, run the ones not already in OUT/points.jsonl, write the results.
    The executor is reached and the output folder proved writable before anything runs; a sweep
    that fails before any point finished leaves no folder or file behind."""
    t0 = time.perf_counter()
    sw, points = load_sweep(path)
    out_path = Path(out) if out else default_out(path)
    if out_path.exists() and not out_path.is_dir():
        raise InputError("--out", str(out_path), "is a file, not a folder")
    journal_path = out_path / "points.jsonl"
    done = {k: r for k, r in read_done(journal_path).items() if r.get("status") == "ok"}
    todo: list[Point] = []
    queued: set[str] = set()
    for p in points:  # a key seen twice (an identical point) runs once
        if p.key not in done and p.key not in queued:
            todo.append(p)
            queued.add(p.key)
    resumed = sum(p.key in done for p in points)
    results: dict[str, dict[str, Any]] = dict(done)
    stop = connect_ray(ray_address, workers) if ray_address else None
    res = SweepResult(out=out_path, rows=[], swept=[])
    try:
        with out_dir(out_path) as out_dir_:
            bar = _Tally(len(todo), resumed, progress)
            journal = _Journal(journal_path)

            def record(p: Point, rec: dict[str, Any]) -> None:
                rec = {"key": p.key, "point": p.index, "overrides": p.overrides, **rec}
                journal.add(rec)
                results[p.key] = rec
                bar.tick(rec["status"])

            try:
                if stop is not None:
                    _run_ray(todo, runner, record)
                else:
                    _run_local(todo, workers or os.cpu_count() or 1, runner, record)
            finally:  # also on Ctrl-C: what finished is in the journal and in the tables
                journal.close()
                bar.close()
                if results:
                    res = _write(sw, points, results, out_dir_, plots)
    finally:
        if stop is not None:
            stop()
    res.ran = bar.done
    res.resumed = resumed
    res.wall_s = round(time.perf_counter() - t0, 2)
    return res


def default_out(path: str | Path) -> Path:
    p = Path(path)
    return p.parent / "out" / p.stem


# -- tables ----------------------------------------------------------------------------------------
def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted columns (ttft_ms.p99); lists are skipped (not one number)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif not isinstance(v, (list, tuple)):
            out[name] = v
    return out


def _display(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def cost_per_m_tokens(price_per_hour: float, devices: int, out_tokens_per_s: float | None) -> float | None:
    """USD per million output tokens: the devices' hourly price over the tokens an hour makes."""
    if not out_tokens_per_s:
        return None
    return price_per_hour * devices / 3600 / out_tokens_per_s * 1e6


def cost_columns(price: float | None, devices: int, out_tokens_per_s: float | None) -> dict[str, Any]:
    """USD per hour of the devices, and USD per million output tokens at the measured throughput."""
    if price is None:
        return {"price_per_hour": None, "cost_per_hour": None, "cost_per_m_output_tokens": None}
    return {"price_per_hour": price, "cost_per_hour": price * devices,
            "cost_per_m_output_tokens": cost_per_m_tokens(price, devices, out_tokens_per_s)}


def make_row(p: Point, rec: dict[str, Any] | None) -> dict[str, Any]:
    sc, s = p.scenario, p.scenario.serving
    hw = load_hardware(sc.hardware)
    devices = s.tp * s.pp * s.replicas
    row: dict[str, Any] = {
        "point": p.index, "status": rec["status"] if rec else "missing", "error": (rec or {}).get("error"),
        "model": load_model(sc.model).name, "hardware": hw.name, "tp": s.tp, "pp": s.pp,
        "replicas": s.replicas, "devices": devices, "scheduler": s.scheduler,
        "max_batch_size": s.max_batch_size, "rate": sc.workload.arrival.rate, "seed": sc.seed,
    }
    for k, v in p.overrides.items():
        if k not in SHORT:
            row[k] = _display(v)
    metrics = (rec or {}).get("metrics") or {}
    row.update(cost_columns(hw.price_per_hour, devices, metrics.get("output_tokens_per_s")))
    row["elapsed_s"] = (rec or {}).get("elapsed_s")
    row["cpu_s"] = (rec or {}).get("cpu_s")
    row["key"] = p.key
    for k, v in flatten(metrics).items():
        row.setdefault(k, v)
    return row


def _swept_columns(points: list[Point]) -> list[str]:
    """The inputs that take more than one value (a one-value grid entry is a fixed override)."""
    seen: dict[str, set[str]] = {}
    for p in points:
        for k, v in p.overrides.items():
            seen.setdefault(SHORT.get(k, k), set()).add(json.dumps(v, sort_keys=True, default=str))
    return [c for c, vals in seen.items() if len(vals) > 1]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    tmp.replace(path)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> bool:
    """Parquet too when pyarrow is there; columns of mixed kinds become text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    cols: list[str] = list(dict.fromkeys(k for r in rows for k in r))
    data: dict[str, list[Any]] = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds <= {int, float} and kinds != {int, float}:
            data[c] = vals
        elif kinds <= {int, float}:
            data[c] = [None if v is None else float(v) for v in vals]
        elif kinds == {bool} or kinds == {str}:
            data[c] = vals
        else:
            data[c] = [None if v is None else str(v) for v in vals]
    pq.write_table(pa.table(data), path)
    return True


def _write(sw: Sweep, points: list[Point], results: dict[str, dict[str, Any]], out: Path,
           plots: bool) -> SweepResult:
    rows = [make_row(p, results.get(p.key)) for p in points]
    swept = _swept_columns(points)
    res = SweepResult(out=out, rows=rows, swept=swept)
    write_csv(rows, out / "results.csv")
    res.files["csv"] = str(out / "results.csv")
    if write_parquet(rows, out / "results.parquet"):
        res.files["parquet"] = str(out / "results.parquet")
    if plots and any(r["status"] == "ok" for r in rows):
        res.files.update(plot_sweep(rows, swept, out, sw.name))
    return res


# -- plots -----------------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _config_label(row: dict[str, Any], cols: list[str]) -> str:
    return ", ".join(f"{c}={row.get(c)}" for c in cols) or "all points"


def plot_sweep(rows: list[dict[str, Any]], swept: list[str], out: Path, title: str) -> dict[str, str]:
    """latency_throughput.png: p99 TTFT and TPOT against throughput, one line per configuration
    (over rate); cost_latency.png: cost per million output tokens against p99 latency, with the
    Pareto front (nothing is both faster and cheaper) drawn in red."""
    from simulator.reports.plots import plt, save  # matplotlib only when plotting (Agg)

    ok = [r for r in rows if r["status"] == "ok" and _num(r.get("output_tokens_per_s")) is not None]
    if not ok:
        return {}
    cfg_cols = [c for c in swept if c not in ("rate", "seed")]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault(_config_label(r, cfg_cols), []).append(r)
    files: dict[str, str] = {}

    many = len(groups) > 10
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(15 if many else 12, 4.8))
    for ax, key, label in ((axes[0], "ttft_ms.p99", "p99 TTFT (ms)"), (axes[1], "tpot_ms.p99", "p99 TPOT (ms)")):
        for g, (name, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: (_num(r.get("rate")) or 0.0, r["point"]))
            xy = [(_num(r["output_tokens_per_s"]), _num(r.get(key))) for r in rs]
            xy = [(x, y) for x, y in xy if x is not None and y is not None]
            style = {"color": cmap(g % 20), "ls": ("-", "--", ":", "-.")[g // 20 % 4]} if many else {}
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", ms=4, label=name, **style)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(label)
        _maybe_log(ax, (_num(r.get(key)) for r in ok))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{title}: latency vs throughput")
    if 1 < len(groups) <= 40:
        axes[1].legend(fontsize=6 if many else 7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    files["latency_plot"] = str(out / "latency_throughput.png")
    save(fig, files["latency_plot"])

    costed = [r for r in ok if _num(r.get("cost_per_m_output_tokens")) is not None]
    if costed:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, key, label in ((axes[0], "ttft_ms.p99", "p99 TTFT (ms)"), (axes[1], "tpot_ms.p99", "p99 TPOT (ms)")):
            xs = [_num(r.get(key)) for r in costed]
            ys = [_num(r["cost_per_m_output_tokens"]) for r in costed]
            ax.scatter([x for x in xs if x is not None], [y for x, y in zip(xs, ys, strict=True) if x is not None],
                       s=14, c="0.55", label="configurations")
            front = pareto_front(xs, ys)
            if front:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], "r-o", ms=5, drawstyle="steps-post",
                        label="Pareto front")
                if len(front) <= 8:
                    for i in front:
                        ax.annotate(_config_label(costed[i], [c for c in swept if c != "seed"]), (xs[i], ys[i]),
                                    fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(label)
            ax.set_ylabel("USD per million output tokens")
            _maybe_log(ax, xs, "x")
            _maybe_log(ax, ys)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_title(f"{title}: cost vs latency")
        fig.tight_layout()
        files["cost_plot"] = str(out / "cost_latency.png")
        save(fig, files["cost_plot"])
    return files


def _maybe_log(ax: Any, values: Iterable[float | None], axis: str = "y") -> None:
    """Log scale when the data span more than 30x (a saturated point dwarfs the rest)."""
    v = [x for x in values if x is not None and x > 0]
    if v and max(v) / min(v) > 30:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# -- the command -----------------------------------------------------------------------------------
TABLE = [("output_tokens_per_s", "tok/s", "{:.0f}"), ("ttft_ms.p99", "p99 TTFT ms", "{:.1f}"),
         ("tpot_ms.p99", "p99 TPOT ms", "{:.2f}"), ("cost_per_m_output_tokens", "$/M tok", "{:.3f}")]


def format_table(rows: list[dict[str, Any]], swept: Iterable[str], limit: int = 50) -> str:
    cols = [c for c in swept] or ["model", "hardware"]
    head = [*cols, *(h for _, h, _ in TABLE), "status"]
    body = []
    for r in rows[:limit]:
        vals = [f"{r[c]:g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        for k, _, f in TABLE:
            v = _num(r.get(k))
            vals.append(f.format(v) if v is not None else "-")
        vals.append(r["status"] if r["status"] == "ok" else f"{r['status']}: {(r.get('error') or '')[:60]}")
        body.append(vals)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths, strict=True)) for b in body]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows in results.csv")
    return "\n".join(lines)


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers", str(args.workers), "must be >= 1")
    res = run_sweep(args.sweep, args.out, args.workers, args.ray)
    if args.json:
        print(json.dumps({"out": str(res.out), "points": len(res.rows), "ok": res.ok, "errors": res.errors,
                          "ran": res.ran, "resumed": res.resumed, "wall_s": res.wall_s, "swept": res.swept,
                          "files": res.files, "results": res.rows}, default=str))
    else:
        print(format_table(res.rows, res.swept))
        print(f"sweep: {len(res.rows)} points ({res.ok} ok, {res.errors} failed; ran {res.ran}, "
              f"resumed {res.resumed}) in {res.wall_s:.1f} s -> {res.files.get('csv')}")
    return 0 if res.ok or not res.rows else 1
