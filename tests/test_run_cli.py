"""`momentsim run` as a user runs it: the contract's JSON, every output file, and bad input
ending in one line that names the file and the field (exit 2, no traceback)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.cli import main

TINY = {
    "name": "tiny", "model": "llama-3.2-1b", "hardware": "h100-sxm",
    "serving": {"scheduler": "continuous", "max_batch_size": 8},
    "workload": {"num_requests": 20, "arrival": {"process": "poisson", "rate": 50.0},
                 "prompt_len": {"dist": "uniform", "low": 32, "high": 256},
                 "output_len": {"dist": "uniform", "low": 1, "high": 32}},
    "slo": {"ttft_ms": 50, "tpot_ms": 10},
    "seed": 3,
}
CONTRACT = {"requests", "makespan_s", "output_tokens_per_s", "requests_per_s", "ttft_ms", "tpot_ms", "e2e_ms",
            "moment_ms", "breakdown_share", "overloaded"}
EXTRAS = {"moments_by_kind", "breakdown_share_by_kind", "mfu", "mbu", "gpu_busy_frac", "host_busy_frac", "kv",
          "preemptions", "goodput", "queue", "overload", "warnings", "latency_of"}


def scenario(tmp_path: Path, name: str = "s.yaml", **over: Any) -> Path:
    data = json.loads(json.dumps(TINY))
    for dotted, v in over.items():
        d = data
        *head, last = dotted.split("__")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_has_the_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "run", str(scenario(tmp_path)), "--json")
    assert rc == 0, err
    s = json.loads(out)  # one JSON object, nothing else on stdout
    assert CONTRACT | EXTRAS <= set(s)
    assert {"arrived", "completed", "rejected"} <= set(s["requests"])
    assert s["requests"]["arrived"] == 20
    assert s["requests"]["completed"] + s["requests"]["rejected"] == 20
    for k in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert set(s[k]) == {"mean", "p50", "p90", "p99"}
        assert s[k]["p50"] <= s[k]["p90"] <= s[k]["p99"]
    assert set(s["moment_ms"]) == {"mean", "std", "p50", "p99", "count"}
    assert sum(s["breakdown_share"].values()) == pytest.approx(1.0)
    # throughput is what completed over the makespan; Little's law can't be checked on 20 requests
    assert s["requests_per_s"] == pytest.approx(s["requests"]["completed"] / s["makespan_s"], rel=1e-6)
    # every request fits (prompt <= 256 + output <= 32 tokens): all complete, and the tokens they
    # produce are the workload's output lengths, drawn again here from the same seed
    from simulator.serving.scenario import load_scenario
    from simulator.serving.workload import make_requests
    sc = load_scenario(scenario(tmp_path))
    outputs = int(make_requests(sc.workload, sc.seed).output_len.sum())
    assert s["requests"]["completed"] == 20
    assert s["output_tokens_per_s"] * s["makespan_s"] == pytest.approx(outputs, rel=1e-6)
    assert 0 < s["mfu"] < 1 and 0 < s["mbu"] < 1 and 0 < s["gpu_busy_frac"] <= 1
    assert err == ""  # stderr is not a tty under pytest: no progress bar


def test_readable_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "run", str(scenario(tmp_path)), "--no-progress")
    assert rc == 0
    assert "llama-3.2-1b on h100-sxm" in out and "TTFT ms" in out and "output tokens/s" in out
    assert len(out.splitlines()) < 20


def test_out_writes_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    rc, out, err = run(capsys, "run", str(scenario(tmp_path)), "--json", "--out", str(out_dir))
    assert rc == 0, err
    s = json.loads(out)
    for name in ("metrics.json", "requests.csv", "moments.csv", "timeseries.csv", "trace.json",
                 "latency_cdf.png", "timeline.png", "moment_hist.png", "breakdown.png"):
        assert (out_dir / name).stat().st_size > 0, name
    for name in ("latency_cdf.png", "timeline.png", "moment_hist.png", "breakdown.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out_dir / name).stat().st_size > 10_000  # a drawn figure, not an empty canvas
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["requests"] == s["requests"]
    rows = list(csv.DictReader(open(out_dir / "requests.csv")))
    assert len(rows) == 20
    assert list(rows[0]) == ["id", "arrival_s", "prompt_len", "output_len", "first_token_s", "finish_s",
                             "ttft_ms", "tpot_ms", "e2e_ms", "replica", "engine", "status", "preemptions"]
    ttft = [float(r["ttft_ms"]) for r in rows if r["ttft_ms"]]
    assert sum(ttft) / len(ttft) == pytest.approx(s["ttft_ms"]["mean"], rel=1e-4)
    for r in rows:  # E2E = TTFT + (n - 1) x TPOT, per request
        if r["tpot_ms"]:
            e2e = float(r["ttft_ms"]) + (int(r["output_len"]) - 1) * float(r["tpot_ms"])
            assert float(r["e2e_ms"]) == pytest.approx(e2e, rel=1e-3, abs=1e-3)
    moments = list(csv.DictReader(open(out_dir / "moments.csv")))
    assert len(moments) == s["moment_ms"]["count"]
    assert {m["kind"] for m in moments} <= {"prefill", "decode", "mixed"}
    busy = sum(float(m["dur_ms"]) for m in moments) / 1e3
    assert busy / s["makespan_s"] == pytest.approx(s["gpu_busy_frac"], rel=1e-3)
    ts = list(csv.DictReader(open(out_dir / "timeseries.csv")))
    assert ts and "t_s" in ts[0] and "queue_len" in ts[0]
    tr = json.loads((out_dir / "trace.json").read_text())
    xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == s["moment_ms"]["count"]
    assert {e["name"] for e in xs} <= {"prefill", "decode", "mixed"}
    assert sum(e["dur"] for e in xs) == pytest.approx(busy * 1e6, rel=1e-4)  # microseconds
    assert any(e["ph"] == "C" for e in tr["traceEvents"])
    assert tr["otherData"]["truncated"] is False


def test_console_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exe = shutil.which("momentsim")
    assert exe, "the momentsim console script is not installed (pip install -e .)"
    r = subprocess.run([exe, "run", str(scenario(tmp_path)), "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert CONTRACT <= set(s)
    assert all(v is None or math.isfinite(v) for v in s["ttft_ms"].values())
    # the installed command and the in-process entry point give the same numbers (same seed)
    rc = main(["run", str(scenario(tmp_path)), "--json"])
    here = json.loads(capsys.readouterr().out)
    assert rc == 0 and {k: s[k] for k in CONTRACT} == {k: here[k] for k in CONTRACT}


# -- bad input: exit 2, one line naming the file and the field ----------------------------------
def bad(capsys: pytest.CaptureFixture[str], path: Path, *more: str) -> str:
    rc, out, err = run(capsys, "run", str(path), "--json", *more)
    assert rc == 2, (out, err)
    assert out == ""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def test_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, model="llama-9")
    err = bad(capsys, p)
    assert str(p) in err and "model" in err and "llama-9" in err and "llama-3-8b" in err  # names presets


def test_unknown_hardware(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, hardware="h900")
    err = bad(capsys, p)
    assert str(p) in err and "hardware" in err and "h900" in err and "h100-sxm" in err


def test_a_bad_model_or_hardware_is_named_once_with_the_file_that_holds_it(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown preset: the scenario file and its field, then the resolver's message; a bad file
    it points to: the scenario's field, then that file's own path, field and message."""
    p = scenario(tmp_path, model="llama-9")
    assert bad(capsys, p).startswith(f"momentsim: {p}: model: unknown model 'llama-9'; known presets: ")
    p = scenario(tmp_path, hardware="h900")
    assert bad(capsys, p).startswith(f"momentsim: {p}: hardware: unknown preset 'h900'; known: ")
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({"hidden_size": -1}))
    p = scenario(tmp_path, model=str(cfg))
    assert bad(capsys, p).startswith(f"momentsim: {p}: model: {cfg}: hidden_size: ")
    hw = tmp_path / "hw.yaml"
    hw.write_text("base: h100-sxm\ndevice: {clock_ghz: -1}\n")
    p = scenario(tmp_path, hardware=str(hw))
    assert bad(capsys, p).startswith(f"momentsim: {p}: hardware: {hw}: device.clock_ghz: ")


def test_field_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, serving__tp=0)
    err = bad(capsys, p)
    assert str(p) in err and "serving.tp" in err


def test_tp_that_does_not_divide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, serving__tp=3)
    err = bad(capsys, p)
    assert str(p) in err and "serving.tp" in err and "num_attention_heads" in err


@pytest.mark.parametrize("arrival, says", [
    ({"process": "poisson", "rate": 2.0, "path": "t.csv"}, "path: process poisson reads no file; set process: trace"),
    ({"process": "burst", "rate": 2.0}, "rate: process burst takes no rate (every request arrives at 0 s)"),
    ({"process": "trace", "path": "t.csv", "rate": 2.0}, "rate: process trace takes no rate (its times come from"),
    ({"process": "poisson", "rate": 2.0, "cv": 3.0}, "cv: only process gamma has a coefficient of variation, not "
                                                     "poisson"),
    ({"process": "gamma", "rate": 2.0, "cv": 3.0, "time_scale": 2.0}, "time_scale: only process trace has times"),
])
def test_an_arrival_field_its_process_never_reads_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            arrival: dict, says: str) -> None:
    # not quietly ignored: a rate under a trace or a file under poisson arrivals would run as if unset
    p = scenario(tmp_path, workload__arrival=arrival)
    err = bad(capsys, p)
    assert err.startswith(f"momentsim: {p}: workload.arrival: ") and says in err


def test_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, serving__batch_size=4)
    err = bad(capsys, p)
    assert str(p) in err and "serving.batch_size" in err and "unknown field" in err


def test_malformed_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("model: llama-3.2-1b\nserving: {tp: 1\nhardware: h100-sxm\n")
    err = bad(capsys, p)
    assert str(p) in err and "YAML" in err


def test_missing_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = bad(capsys, tmp_path / "nope.yaml")
    assert "nope.yaml" in err and "not found" in err


def test_model_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, model="llama-3-70b")
    err = bad(capsys, p)
    assert str(p) in err and "llama-3-70b" in err
    assert "GB" in err and "would fit" in err  # what it needs and what would fit


def test_trace_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = scenario(tmp_path, workload__arrival={"process": "trace", "path": "gone.csv"})
    err = bad(capsys, p)
    assert str(p) in err and "workload.arrival.path" in err and "gone.csv" in err


@pytest.mark.parametrize("text, field", [
    ("arrival_s,prompt_len\n0.0,10\n", "output_len"),            # a column missing
    ("arrival_s,prompt_len,output_len\n0.0,10,5\n0.1,-3,5\n", "prompt_len (line 3)"),  # negative length
    ("arrival_s,prompt_len,output_len\n0.0,ten,5\n", "prompt_len (line 2)"),
])
def test_trace_malformed(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str) -> None:
    t = tmp_path / "trace.csv"
    t.write_text(text)
    p = scenario(tmp_path, workload__arrival={"process": "trace", "path": "trace.csv"},
                 workload__prompt_len={"dist": "trace"}, workload__output_len={"dist": "trace"})
    err = bad(capsys, p)
    assert str(t) in err and field in err
