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
import hashlib
import importlib.metadata
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from hwmodels.errors import InputError, file_stamp, from_validation, load_mapping, open_regular
from hwmodels.load import load_hardware
from simulator.moment.model import load_model
from simulator.reports.outdir import out_dir
from simulator.reports.progress import Progress
from simulator.serving.scenario import (
    Scenario,
    check_path,
    resolve_paths,
    scenario_from_dict,
    set_path,
)
from simulator.studies.runner import Runner, default_runner
from simulator.studies.sweep_report import _write, format_table
from simulator.studies.sweep_schema import (
    MAX_POINTS,
    Point,
    Status,
    Sweep,
    SweepResult,
    count_points,
    expand,
)

RAY_CONNECT_S = 10.0    # how long --ray ADDRESS may take to answer
MAX_RECORD_BYTES = 16 << 20  # one line of points.jsonl
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # holds hwmodels/ and simulator/ (see code_version)


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
def _resolved(kind: str, arg: str, _stamp: tuple[int, int] | None) -> str:
    """The model or hardware as simulated (presets and `base:` resolved, profiles applied); _stamp:
    its file's (errors.file_stamp), so an edited file is resolved again."""
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
                       "model": _resolved("model", sc.model, file_stamp(sc.model)),
                       "hardware": _resolved("hardware", sc.hardware, file_stamp(sc.hardware)),
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
def run_point(sc: Scenario, runner: Runner | None = None) -> dict[str, Any]:
    """Run one scenario; a failure becomes a record (a sweep goes on past a bad point)."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rec = {"status": "ok", "metrics": (runner or default_runner)(sc)}
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


# -- the command -----------------------------------------------------------------------------------
def cmd_sweep(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers", str(args.workers), "must be >= 1")
    res = run_sweep(args.sweep, args.out, args.workers, args.ray)
    if args.json:
        print(json.dumps({"out": str(res.out), "points": len(res.rows), "ok": res.ok, "errors": res.errors,
                          "overloaded": res.count(Status.OVERLOADED),
                          "ran": res.ran, "resumed": res.resumed, "wall_s": res.wall_s, "swept": res.swept,
                          "files": res.files, "results": res.rows}, default=str))
    else:
        print(format_table(res.rows, res.swept))
        over = res.count(Status.OVERLOADED)
        print(f"sweep: {len(res.rows)} points ({res.ok} ran" + (f", {over} of them overloaded" if over else "")
              + f", {res.errors} failed; ran {res.ran}, "
              f"resumed {res.resumed}) in {res.wall_s:.1f} s -> {res.files.get('csv')}")
    return 0 if res.ok or not res.rows else 1
