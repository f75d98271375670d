"""The command line as people use it: `run --set`, `plan --rate/--slo`, help on every option,
and no traceback when the reader of a pipe goes away (`| head`)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodels.errors import InputError
from simulator.cli import build_parser, main
from simulator.serving.scenario import Scenario, load_scenario

TINY = {
    "name": "tiny", "model": "llama-3.2-1b", "hardware": "h100-sxm",
    "serving": {"scheduler": "continuous", "max_batch_size": 8},
    "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate": 50.0},
                 "prompt_len": {"dist": "fixed", "value": 64}, "output_len": {"dist": "fixed", "value": 8}},
    "seed": 3,
}


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(TINY))
    return p


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- run --set ---------------------------------------------------------------------------------------
def test_set_overrides_fields_with_yaml_types(scenario: Path) -> None:
    sc = load_scenario(scenario, ["serving.max_batch_size=128", "workload.arrival.rate=20",
                                  "serving.prefix_caching=true", "workload.output_len={dist: uniform, low: 4, high: 9}",
                                  "seed=7"])
    assert sc.serving.max_batch_size == 128 and isinstance(sc.serving.max_batch_size, int)
    assert sc.workload.arrival.rate == 20.0 and sc.serving.prefix_caching is True and sc.seed == 7
    assert (sc.workload.output_len.low, sc.workload.output_len.high) == (4, 9)
    assert sc.serving.scheduler == "continuous"  # untouched fields stay as in the file
    # the same as writing it in the file
    data = json.loads(json.dumps(TINY))
    data["serving"]["max_batch_size"] = 128
    assert load_scenario(scenario, ["serving.max_batch_size=128"]) == Scenario.model_validate(data)


def test_run_with_set_changes_the_run(scenario: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(scenario), "--json", "--set", "workload.num_requests=7", "--set", "serving.tp=1"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"]["arrived"] == 7


@pytest.mark.parametrize("setting, field, words", [
    ("serving.max_batch_sise=4", "--set serving.max_batch_sise", ["unknown field", "max_batch_size"]),
    ("serving.max_batch_size=-1", "serving.max_batch_size", ["greater than 0", "given by --set"]),
    ("serving.scheduler=fifo", "serving.scheduler", ["'chunked'", "given by --set"]),
    ("workload.arrival.rate=fast", "workload.arrival.rate", ["number", "given by --set"]),
    ("serving.tp", "--set serving.tp", ["FIELD=VALUE"]),
    ("serving.tp.x=1", "--set serving.tp.x", ["has no field"]),
    ("serving.max_batch_size=[1", "--set serving.max_batch_size", ["not a YAML value"]),
])
def test_bad_set_is_one_line_naming_the_field(scenario: Path, capsys: pytest.CaptureFixture[str],
                                              setting: str, field: str, words: list[str]) -> None:
    err = one_line_error(capsys, "run", str(scenario), "--set", setting)
    assert str(scenario) in err and field in err, err
    for w in words:
        assert w in err, err


def test_set_paths_are_relative_to_the_working_directory(tmp_path: Path, scenario: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    hw = tmp_path / "cwd" / "fast.yaml"
    hw.parent.mkdir()
    hw.write_text("base: h100-sxm\nname: fast\ndevice: {memory_bw_gbps: 6700}\n")
    monkeypatch.chdir(hw.parent)
    assert load_scenario(scenario, ["hardware=fast.yaml"]).hardware == str(hw)
    assert load_scenario(scenario, ["hardware=h200-sxm"]).hardware == "h200-sxm"  # a preset stays a name


# -- plan --rate and --slo -----------------------------------------------------------------------------
PLAN = {
    "model": "llama-3.2-1b",
    "workload": {"num_requests": 100, "arrival": {"process": "poisson", "rate": 10.0},
                 "prompt_len": {"dist": "fixed", "value": 128}, "output_len": {"dist": "fixed", "value": 64}},
    "slo": {"p99_ttft_ms": 200, "p99_tpot_ms": 20},
    "candidates": [{"hardware": "h100-sxm"}],
    "search": {"tp": [1], "max_replicas": 2, "max_batch_size": [16]},
    "rate_steps": 0,
}


def test_plan_rate_and_slo_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Scenario] = []

    def runner(sc: Scenario) -> dict[str, Any]:
        seen.append(sc)
        return {"output_tokens_per_s": 640.0, "ttft_ms": {"p99": 150.0}, "tpot_ms": {"p99": 5.0},
                "goodput": {"fraction": 1.0}, "requests": {"rejected": 0}}

    monkeypatch.setattr("simulator.studies.plan.default_runner", runner)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(PLAN))
    out = str(tmp_path / "o")
    assert main(["plan", str(path), "--out", out, "--json"]) == 0  # 150 ms of 200, 10 % headroom: ok
    assert json.loads(capsys.readouterr().out)["best"]["replicas"] == 1
    assert {sc.workload.arrival.rate for sc in seen} == {10.0}
    seen.clear()
    assert main(["plan", str(path), "--out", out, "--json", "--rate", "25", "--slo", "p99_ttft_ms=160"]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res["target_rate"] == 25.0 and res["slo"]["p99_ttft_ms"] == 160  # 150 > 0.9 x 160: no answer
    assert {sc.workload.arrival.rate for sc in seen} == {25.0}
    assert main(["plan", str(path), "--out", out, "--json", "--slo", "p99_ttft_ms=160", "--slo", "headroom=0"]) == 0
    assert json.loads(capsys.readouterr().out)["slo"]["headroom"] == 0
    err = one_line_error(capsys, "plan", str(path), "--rate", "-3")
    assert "workload.arrival.rate" in err and "given by --rate" in err
    err = one_line_error(capsys, "plan", str(path), "--slo", "p99_ttfb_ms=3")
    assert "--slo p99_ttfb_ms" in err and "p99_ttft_ms" in err
    err = one_line_error(capsys, "plan", str(path), "--slo", "headroom=2")
    assert "slo.headroom" in err and "given by --slo" in err


# -- help ------------------------------------------------------------------------------------------------
def test_every_option_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) >= {"step", "memory", "curves", "run", "sweep", "plan", "calibrate", "validate"}
    missing = [f"{name} {a.dest}" for name, sub in subs.choices.items() for a in sub._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert not missing, missing
    for name, sub in subs.choices.items():  # and it prints
        assert name in sub.format_help()


# -- pipes -------------------------------------------------------------------------------------------------
def exe() -> list[str]:
    found = shutil.which("momentsim")
    return [found] if found else [sys.executable, "-m", "simulator.cli"]


@pytest.mark.parametrize("argv", [
    ["step", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode", "16x4096", "--json"],
    ["curves", "--model", "llama-3.2-1b", "--hardware", "h100-sxm"],
])
def test_a_reader_that_leaves_early_gets_no_traceback(argv: list[str]) -> None:
    # the reader closes the pipe before anything is written: every write then fails (EPIPE), as
    # under `momentsim ... | head -c 10` when head has exited first
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(Path.cwd()))}
    p = subprocess.Popen([*exe(), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and err == "", err
    assert rc == 141  # as a process that SIGPIPE ended


def test_head_in_a_shell(tmp_path: Path) -> None:
    sh = shutil.which("sh")
    if sh is None or not shutil.which("head"):
        pytest.skip("no POSIX shell here")
    cmd = " ".join([*exe(), "step", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode", "16x4096",
                    "--json", "|", "head", "-c", "10"])
    r = subprocess.run([sh, "-c", cmd], capture_output=True, text=True, timeout=120)
    assert r.stdout == '{"step_ms"' and "Traceback" not in r.stderr, r.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["serving.max_batch_size", "serving.tp", "workload.arrival", "workload.prompt_len.value",
                              "slo.ttft_ms", "seed", "model", "serving", "serving.scheduler.x"]) | st.text(max_size=20),
       value=st.text(max_size=20) | st.sampled_from(["-1", "0", "1e9", "true", "[1, 2]", "{a: 1}", "~", "null"]),
       eq=st.booleans())
def test_any_set_is_a_scenario_or_one_input_error(scenario: Path, field: str, value: str, eq: bool) -> None:
    try:
        load_scenario(scenario, [f"{field}={value}" if eq else field + value])
    except InputError as e:
        assert "\n" not in str(e) and str(scenario) in str(e)
