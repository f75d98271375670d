"""The shipped scenarios/: every file loads as what it is (scenario, hardware, sweep, plan), names
a model and hardware that resolve and fit, is listed in the README, and the smallest run end to
end. The synthetic trace is what its script draws."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from hwmodels.load import load_hardware
from simulator.reports.run import check_scenario, run_scenario
from simulator.serving.scenario import load_scenario
from simulator.studies.plan_schema import load_plan
from simulator.studies.sweep import load_sweep

DIR = Path(__file__).resolve().parent.parent / "scenarios"
FILES = sorted(DIR.glob("*.yaml"))


def kind(p: Path) -> str:
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    if "candidates" in data:
        return "plan"
    if "grid" in data or "points" in data:
        return "sweep"
    if "device" in data or ("base" in data and "model" not in data):
        return "hardware"
    return "scenario"


SCENARIOS = [p for p in FILES if kind(p) == "scenario"]


def test_there_are_enough_of_each() -> None:
    kinds = [kind(p) for p in FILES]
    assert kinds.count("scenario") >= 9 and kinds.count("sweep") >= 2 and kinds.count("plan") >= 1
    assert {"sweep-rate.yaml", "sweep-hardware.yaml", "plan-llama-3-8b.yaml", "h100-2xbw.yaml"} <= {p.name for p in FILES}


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_scenario_validates_and_fits(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Question:"), "the header says the question the file answers"
    assert "Read the answer" in text
    sc = load_scenario(path)
    check_scenario(sc, str(path))  # model and hardware resolve, tp divides, weights + KV fit


@pytest.mark.parametrize("path", [p for p in FILES if kind(p) == "sweep"], ids=lambda p: p.name)
def test_sweep_validates_every_point(path: Path) -> None:
    _, points = load_sweep(path)
    assert len(points) >= 2
    for p in points:
        check_scenario(p.scenario, str(path))


@pytest.mark.parametrize("path", [p for p in FILES if kind(p) == "plan"], ids=lambda p: p.name)
def test_plan_validates(path: Path) -> None:
    plan = load_plan(path)
    assert plan.rate > 0
    assert len(plan.candidates) >= 5 or plan.search.pd_ratios  # it compares parts, or serving layouts


def test_what_if_part_doubles_h100_bandwidth_only() -> None:
    h100, fast = load_hardware("h100-sxm"), load_hardware(str(DIR / "h100-2xbw.yaml"))
    assert fast.device.memory_bw_gbps == 2 * h100.device.memory_bw_gbps
    assert fast.device.model_dump(exclude={"memory_bw_gbps"}) == h100.device.model_dump(exclude={"memory_bw_gbps"})


def test_readme_lists_every_file() -> None:
    readme = (DIR / "README.md").read_text(encoding="utf-8")
    for p in [*FILES, *sorted((DIR / "traces").iterdir())]:
        if p.suffix in (".yaml", ".csv", ".py"):
            assert f"`{p.relative_to(DIR)}`" in readme, p.name


def test_trace_is_synthetic_and_reproducible(tmp_path: Path) -> None:
    script = DIR / "traces" / "make_synthetic_trace.py"
    assert "SYNTHETIC" in script.read_text(encoding="utf-8") and "not real Azure data" in script.read_text(encoding="utf-8")
    spec = importlib.util.spec_from_file_location("make_synthetic_trace", script)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "t.csv"
    mod.write(out)
    shipped = DIR / "traces" / "synthetic-azure-conv.csv"
    assert out.read_bytes() == shipped.read_bytes()
    assert shipped.read_text(encoding="utf-8").splitlines()[0] == "TIMESTAMP,ContextTokens,GeneratedTokens"


@pytest.mark.parametrize("name", ["llama-3.2-1b-cpu.yaml", "trace-replay.yaml"])
def test_smallest_run_end_to_end(name: str) -> None:
    sc = load_scenario(DIR / name)
    m = run_scenario(sc)
    req = m["requests"]
    assert req["arrived"] == sc.workload.num_requests and req["completed"] == req["arrived"]
    assert m["ttft_ms"]["p99"] >= m["ttft_ms"]["p50"] > 0
    # every request completed: the tokens produced are the workload's output lengths (conservation)
    from simulator.serving.workload import make_requests
    outputs = int(make_requests(sc.workload, sc.seed).output_len.sum())
    assert m["output_tokens_per_s"] * m["makespan_s"] == pytest.approx(outputs, rel=1e-6)
