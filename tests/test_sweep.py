"""`momentsim sweep`: grid expansion, dotted paths, one-line errors before anything runs, results
with cost columns, failed points recorded, resume after an interruption, and the Ray path."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hwmodels.errors import InputError
from simulator.cli import main
from simulator.serving.scenario import Scenario, check_path, set_path
from simulator.studies.pareto import pareto_front
from simulator.studies.sweep import load_sweep, read_done, run_sweep
from simulator.studies.sweep_schema import (
    Range,
    Sweep,
    expand,
)

# a scenario that simulates in a fraction of a second: a 1B model, few short requests
TINY = {
    "name": "tiny",
    "model": "llama-3.2-1b",
    "hardware": "h100-sxm",
    "serving": {"scheduler": "continuous", "max_batch_size": 16},
    "workload": {"num_requests": 40, "arrival": {"process": "poisson", "rate": 5.0},
                 "prompt_len": {"dist": "fixed", "value": 64}, "output_len": {"dist": "fixed", "value": 16}},
    "seed": 0,
}


def write(tmp: Path, name: str, data: dict[str, Any]) -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return p


def read_csv(p: Path) -> list[dict[str, str]]:
    with p.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


# -- expansion and paths ---------------------------------------------------------------------------
def test_range_linear_log_and_integers() -> None:
    assert Range.model_validate({"from": 0.0, "to": 1.0, "steps": 5}).values() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert Range.model_validate({"from": 1, "to": 8, "steps": 4, "log": True}).values() == [1, 2, 4, 8]
    assert all(isinstance(v, int) for v in Range.model_validate({"from": 1, "to": 8, "steps": 4, "log": True}).values())
    # 2 * 16^(i/4): 2, 4, 8, 16, 32
    assert Range.model_validate({"from": 2.0, "to": 32.0, "steps": 5, "log": True}).values() == [2, 4, 8, 16, 32]
    # integer ends whose values fall between integers give floats, not rounded rates
    assert Range.model_validate({"from": 1, "to": 2, "steps": 3}).values() == [1.0, 1.5, 2.0]
    assert Range.model_validate({"from": 3, "to": 9, "steps": 1}).values() == [3.0]
    with pytest.raises(ValueError):
        Range.model_validate({"from": 0, "to": 8, "steps": 4, "log": True})


def test_expand_grid_points_and_seeds() -> None:
    sw = Sweep.model_validate({"base": TINY, "grid": {"serving.tp": [1, 2], "workload.arrival.rate": {"from": 1, "to": 3, "steps": 3}},
                               "points": [{"hardware": "h100-sxm"}, {"hardware": "h200-sxm"}]})
    pts = list(expand(sw))
    assert len(pts) == 2 * 2 * 3
    assert pts[0] == {"hardware": "h100-sxm", "serving.tp": 1, "workload.arrival.rate": 1}
    assert pts[-1] == {"hardware": "h200-sxm", "serving.tp": 2, "workload.arrival.rate": 3}
    assert len({json.dumps(p, sort_keys=True) for p in pts}) == len(pts)
    rep = list(expand(Sweep.model_validate({"base": TINY, "grid": {"serving.tp": [1]}, "repeats": 3}), base_seed=7))
    assert [p["seed"] for p in rep] == [7, 8, 9]
    seeds = list(expand(Sweep.model_validate({"base": TINY, "points": [{"serving.tp": 1}, {"serving.tp": 2}], "seeds": [5, 9]})))
    assert [(p["serving.tp"], p["seed"]) for p in seeds] == [(1, 5), (1, 9), (2, 5), (2, 9)]


def test_set_path_and_check_path() -> None:
    d: dict[str, Any] = {"serving": {"tp": 1}}
    set_path(d, "serving.tp", 4)
    set_path(d, "workload.arrival.rate", 2.5)
    assert d == {"serving": {"tp": 4}, "workload": {"arrival": {"rate": 2.5}}}
    for ok in ("serving.tp", "workload.arrival.rate", "hardware", "model", "workload.prompt_len.mean",
               "workload.prompt_len", "slo.p99_ttft_ms", "workload.prefix.length", "seed"):
        check_path(ok, "s.yaml", ok)
    with pytest.raises(InputError) as e:
        check_path("serving.tpp", "s.yaml", "grid.serving.tpp")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.yaml: grid.serving.tpp:") and "allowed:" in msg and "tp" in msg
    with pytest.raises(InputError, match="is a value"):
        check_path("serving.tp.x", "s.yaml", "grid.serving.tp.x")


def test_bad_path_and_bad_value_exit_2_before_running(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simulator.studies.sweep.default_runner", lambda sc: pytest.fail("nothing may run"))
    bad = write(tmp_path, "bad.yaml", {"base": TINY, "grid": {"serving.schedular": ["continuous"]}})
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "grid.serving.schedular" in err and "scheduler" in err
    bad = write(tmp_path, "bad2.yaml", {"base": TINY, "grid": {"serving.scheduler": ["continuous", "fifo"]}})
    assert main(["sweep", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "serving.scheduler" in err and "'chunked'" in err
    assert "fifo" in err  # the point's values are named
    bad = write(tmp_path, "bad3.yaml", {"base": TINY, "points": [{"hardware": "h100"}]})
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hardware" in err and "h100-sxm" in err  # the known presets
    assert not (tmp_path / "o" / "points.jsonl").exists()


# -- running ---------------------------------------------------------------------------------------
def test_overloaded_and_empty_points_say_so_in_the_status_column(tmp_path: Path) -> None:
    # an L4 serving 1B at 300 req/s of 512-token prompts cannot keep up (the queue grows); prompts
    # of 64 tokens with max_batched_tokens 32 are all rejected by the continuous scheduler
    base = {**TINY, "hardware": "l4", "workload": {**TINY["workload"], "num_requests": 1000}}
    sw = write(tmp_path, "sw.yaml", {"base": base, "points": [
        {"workload.arrival.rate": 2.0}, {"workload.arrival.rate": 300.0},
        {"workload.arrival.rate": 2.0, "serving.max_batched_tokens": 32}]})
    res = run_sweep(sw, tmp_path / "out", workers=1, progress=False)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "overloaded", "no completions"]
    assert rows[1]["overloaded"] == "True" and "overloaded" in rows[1]["warnings"]
    assert "max_batched_tokens" in rows[2]["warnings"] and rows[0]["warnings"] == ""
    assert res.ok == 3 and res.errors == 0
    assert (tmp_path / "out" / "latency_throughput.png").stat().st_size > 0


def test_four_points_end_to_end_with_cost(tmp_path: Path) -> None:
    sw = write(tmp_path, "sw.yaml", {"base": TINY, "grid": {"serving.max_batch_size": [8, 16],
                                                             "workload.arrival.rate": [4.0, 8.0]}})
    res = run_sweep(sw, tmp_path / "out", workers=2, progress=False)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert [(int(r["max_batch_size"]), float(r["rate"])) for r in rows] == [(8, 4), (8, 8), (16, 4), (16, 8)]
    for r in rows:
        assert r["model"] == "llama-3.2-1b" and r["hardware"] == "h100-sxm" and r["tp"] == "1"
        assert int(r["requests.completed"]) == 40
        for col in ("ttft_ms.p99", "tpot_ms.p99", "e2e_ms.p50", "output_tokens_per_s"):
            assert float(r[col]) > 0
        # USD per million output tokens = price x devices / 3600 / (tokens/s) x 1e6; h100-sxm is $4/h
        assert float(r["price_per_hour"]) == 4.0 and float(r["cost_per_hour"]) == 4.0
        assert float(r["cost_per_m_output_tokens"]) == pytest.approx(4.0 / 3600 / float(r["output_tokens_per_s"]) * 1e6)
    assert res.swept == ["max_batch_size", "rate"]
    assert {"csv", "latency_plot", "cost_plot"} <= set(res.files)
    for f in res.files.values():
        assert Path(f).stat().st_size > 0
    assert len(read_done(tmp_path / "out" / "points.jsonl")) == 4


def test_failed_point_is_recorded_not_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # tp=3 does not divide Llama 3.2 1B's 32 heads: the point fails when it runs, the others go on
    sw = write(tmp_path, "sw.yaml", {"base": TINY, "grid": {"serving.tp": [1, 3]}})
    assert main(["sweep", str(sw), "--out", str(tmp_path / "o"), "--workers", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] == 1 and out["errors"] == 1
    rows = read_csv(tmp_path / "o" / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert "tp=3" in rows[1]["error"] and rows[1]["tp"] == "3" and rows[0]["error"] == ""


def _stub(calls: list[str], stop_after: int | None = None):
    def run(sc: Scenario) -> dict[str, Any]:
        if stop_after is not None and len(calls) >= stop_after:
            raise KeyboardInterrupt
        calls.append(sc.name)
        rate = sc.workload.arrival.rate or 1.0
        return {"output_tokens_per_s": 100.0 * rate, "ttft_ms": {"p99": 10 * rate}, "tpot_ms": {"p99": 5.0}}
    return run


def test_resume_skips_finished_points(tmp_path: Path) -> None:
    sw = write(tmp_path, "sw.yaml", {"base": TINY, "grid": {"workload.arrival.rate": [1.0, 2.0, 3.0, 4.0]}})
    out = tmp_path / "out"
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # interrupted after two points
        run_sweep(sw, out, workers=1, runner=_stub(calls, stop_after=2), progress=False)
    assert len(calls) == 2 and len(read_done(out / "points.jsonl")) == 2
    assert [r["status"] for r in read_csv(out / "results.csv")] == ["ok", "ok", "missing", "missing"]
    with (out / "points.jsonl").open("a") as f:
        f.write('{"key": "torn line of a crash')  # a record cut short is ignored
    calls2: list[str] = []
    res = run_sweep(sw, out, workers=1, runner=_stub(calls2), progress=False)
    assert len(calls2) == 2 and res.ran == 2 and res.resumed == 2 and res.ok == 4
    calls3: list[str] = []
    res = run_sweep(sw, out, workers=1, runner=_stub(calls3), progress=False)
    assert calls3 == [] and res.resumed == 4
    # a changed point (another rate) is a new key: only it runs
    sw = write(tmp_path, "sw.yaml", {"base": TINY, "grid": {"workload.arrival.rate": [1.0, 2.0, 3.0, 5.0]}})
    calls4: list[str] = []
    run_sweep(sw, out, workers=1, runner=_stub(calls4), progress=False)
    assert len(calls4) == 1


def test_base_from_file_and_relative_hardware(tmp_path: Path) -> None:
    (tmp_path / "hw").mkdir()
    write(tmp_path / "hw", "fast.yaml", {"base": "h100-sxm", "name": "fast-h100", "device": {"memory_bw_gbps": 6700}})
    write(tmp_path, "base.yaml", {**TINY, "hardware": "hw/fast.yaml"})
    sw = write(tmp_path, "sw.yaml", {"base": "base.yaml", "points": [{}, {"hardware": "h100-sxm"}, {"hardware": "hw/fast.yaml"}]})
    _, pts = load_sweep(sw)
    assert pts[0].scenario.hardware == str(tmp_path / "hw" / "fast.yaml")
    assert pts[2].scenario.hardware == str(tmp_path / "hw" / "fast.yaml")
    assert pts[0].key == pts[2].key != pts[1].key
    res = run_sweep(sw, tmp_path / "o", workers=1, runner=_stub([]), progress=False, plots=False)
    assert [r["hardware"] for r in res.rows] == ["fast-h100", "h100-sxm", "fast-h100"]


def test_ray_local(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'momentsim[ray]')")
    sw = write(tmp_path, "sw.yaml", {"base": TINY, "grid": {"workload.arrival.rate": [4.0, 8.0], "serving.tp": [1, 3]}})
    res = run_sweep(sw, tmp_path / "o", workers=2, ray_address="local", progress=False, plots=False)
    assert not ray.is_initialized()  # a Ray the sweep started is shut down
    assert [r["status"] for r in res.rows] == ["ok", "error", "ok", "error"]
    assert all(int(r["requests.completed"]) == 40 for r in res.rows if r["status"] == "ok")
    assert len(read_done(tmp_path / "o" / "points.jsonl")) == 4


def test_pareto_front_by_hand() -> None:
    xs = [1.0, 2.0, 3.0, 2.0, 4.0, None, 1.0]
    ys = [5.0, 3.0, 4.0, 1.0, 0.5, 0.1, 5.0]
    # (1,5) ok; (2,3) beaten by (2,1); (3,4) beaten by (2,1); (2,1) ok; (4,0.5) ok; None skipped; dup of 0 dropped
    assert pareto_front(xs, ys) == [0, 3, 4]
    assert pareto_front([], []) == []
