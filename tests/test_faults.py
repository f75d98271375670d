"""The faults of issue 12, one test each: what a hostile or careless user gave, and the one line
(exit 2) or the right number it must now get. Section numbers follow the issue."""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hwmodels.errors import MAX_FILE_BYTES, InputError, load_mapping
from hwmodels.load import load_hardware
from simulator.cli import main
from simulator.moment.cost import step_model
from simulator.moment.model import load_model
from simulator.moment.ops import Batch
from simulator.serving import budget
from simulator.serving.scenario import load_scenario
from simulator.serving.workload import read_trace
from simulator.studies import sweep as sweep_mod

ROOT = Path(__file__).resolve().parent.parent
TINY = {"model": "llama-3.2-1b", "hardware": "h100-sxm",
        "serving": {"scheduler": "continuous", "max_batch_size": 8},
        "workload": {"num_requests": 10, "arrival": {"process": "poisson", "rate": 20.0},
                     "prompt_len": {"dist": "fixed", "value": 32}, "output_len": {"dist": "fixed", "value": 4}}}


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def with_(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(base))
    cur = d
    *head, last = dotted.split(".")
    for k in head:
        cur = cur.setdefault(k, {})
    cur[last] = value
    return d


def one_line_exit_2(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    rc = main(list(argv))
    _, err = capsys.readouterr()
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("momentsim: "), err
    return err


def cli(*argv: str, timeout: float = 60, mem_bytes: int = 2 << 30, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command in a child process under an address-space limit, for faults whose danger is
    time or memory (an honest check needs the real process, not a caught exception)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "simulator.cli", *argv], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env, cwd=cwd)


def assert_one_line(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("momentsim: "), p.stderr[-2000:]
    assert "Traceback" not in p.stderr


# -- 1. alias bomb, file size --------------------------------------------------------------------
def alias_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nmodel: *a{levels}\nhardware: h100-sxm\n"


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    p = write(tmp_path / "bomb.yaml", alias_bomb())
    assert p.stat().st_size < 600  # 9^10 = 3.5e9 strings once expanded
    t0 = time.process_time()
    with pytest.raises(InputError, match="aliases are expanded"):
        load_scenario(p)
    assert time.process_time() - t0 < 5  # the walk costs the parsed size (tens of nodes), not 9^10


def test_alias_bomb_cli_stays_small(tmp_path: Path) -> None:
    p = write(tmp_path / "bomb.yaml", alias_bomb(10))
    assert_one_line(cli("run", str(p), mem_bytes=1 << 30, timeout=60))


def test_recursive_alias_and_shared_aliases(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="contains itself"):
        load_mapping(write(tmp_path / "r.yaml", "a: &x [1, *x]\n"))
    # an alias used a few times is fine: it counts once per use
    ok = "defaults: &d {max_batch_size: 8}\nserving: *d\nother: *d\n"
    assert load_mapping(write(tmp_path / "ok.yaml", ok))["serving"] == {"max_batch_size": 8}


def test_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    p = tmp_path / "huge.yaml"
    with p.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs nothing, must not be read
    with pytest.raises(InputError, match="at most"):
        load_mapping(p)


# -- 2. physical bounds on hardware values -------------------------------------------------------
@pytest.mark.parametrize("dotted,value", [
    ("host.step_overhead_us", float("inf")), ("efficiency.floor_us", float("inf")),
    ("efficiency.elementwise_memory.norm", 0), ("efficiency.elementwise_memory.norm", float("nan")),
    ("efficiency.comm_latency_us", float("nan")), ("efficiency.comm_latency_us", -1e6),
    ("device.memory_gb", float("inf")), ("device.memory_gb", 1e300), ("device.clock_ghz", True),
    ("efficiency.elementwise_memory.nrom", 0.5),  # a misspelt category is not silently ignored
])
def test_hardware_values_out_of_physical_bounds(tmp_path: Path, dotted: str, value: Any) -> None:
    p = write(tmp_path / "hw.yaml", with_({"base": "h100-sxm", "name": "x"}, dotted, value))
    with pytest.raises(InputError) as e:
        load_hardware(str(p))
    assert e.value.where == str(p) and e.value.field.startswith(dotted.rsplit(".", 1)[0].split(".")[0])


# -- 3. stale resume -------------------------------------------------------------------------------
def test_resume_reruns_points_whose_preset_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Change memory_bw_gbps in a preset: every point must run again, none resume old numbers."""
    import hwmodels.load as hl

    presets = tmp_path / "presets"
    presets.mkdir()
    for f in hl.PRESET_DIR.glob("*.yaml"):
        (presets / f.name).write_text(f.read_text())
    monkeypatch.setattr(hl, "PRESET_DIR", presets)

    def fresh() -> None:
        hl._load_hardware.cache_clear()
        sweep_mod._resolved.cache_clear()

    fresh()
    try:
        _resume_after_a_preset_changed(tmp_path, presets / "h100-sxm.yaml", fresh)
    finally:
        fresh()  # the cached edited preset must not outlive this test


def _resume_after_a_preset_changed(tmp_path: Path, h100: Path, fresh: Any) -> None:
    sw = write(tmp_path / "sw.yaml", {"base": TINY, "grid": {"workload.arrival.rate": [5.0, 10.0]}})
    seen: list[float] = []

    def runner(sc: Any) -> dict:
        seen.append(load_hardware(sc.hardware).device.memory_bw_gbps)
        return {"output_tokens_per_s": 1.0}

    first = sweep_mod.run_sweep(sw, tmp_path / "out", workers=1, runner=runner, plots=False)
    assert (first.ran, first.resumed) == (2, 0)
    again = sweep_mod.run_sweep(sw, tmp_path / "out", workers=1, runner=runner, plots=False)
    assert (again.ran, again.resumed) == (0, 2)  # nothing changed: resumed
    h100.write_text(h100.read_text().replace("memory_bw_gbps: 3350", "memory_bw_gbps: 6700"))
    fresh()
    third = sweep_mod.run_sweep(sw, tmp_path / "out", workers=1, runner=runner, plots=False)
    assert (third.ran, third.resumed) == (2, 0)
    assert seen == [3350, 3350, 6700, 6700]


def test_resume_key_holds_the_code_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert sweep_mod.code_version().startswith(sweep_mod._version() + "+")
    for pkg in ("hwmodels", "simulator"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "x.py").write_text("A = 1\n")
    v1 = sweep_mod.code_version(tmp_path)
    (tmp_path / "simulator" / "x.py").write_text("A = 2\n")  # an edit of the engine, same release
    sweep_mod.code_version.cache_clear()
    assert sweep_mod.code_version(tmp_path) != v1
    sc = load_scenario_from(TINY)
    k1 = sweep_mod.point_key(sc)
    monkeypatch.setattr(sweep_mod, "code_version", lambda: "0.1.0+other")
    assert sweep_mod.point_key(sc) != k1


def load_scenario_from(data: dict[str, Any]):
    from simulator.serving.scenario import Scenario

    return Scenario.model_validate(data)


# -- 4. non-finite times --------------------------------------------------------------------------
def test_infinite_time_scale_is_an_input_error(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.csv", "arrival_s,prompt_len,output_len\n0,10,2\n1,10,2\n")
    p = write(tmp_path / "s.yaml", with_(TINY, "workload.arrival", {"process": "trace", "path": str(trace),
                                                                   "time_scale": float("inf")}))
    with pytest.raises(InputError, match="time_scale"):
        load_scenario(p)


@pytest.mark.parametrize("dt", [0.0, -1.0, float("nan"), float("inf")])
def test_engine_refuses_a_moment_that_does_not_advance_time(monkeypatch: pytest.MonkeyPatch, dt: float) -> None:
    """Whatever slips past the bounds, a moment that is not a finite step forward stops the run
    with one line instead of spinning (or jumping to infinity)."""
    from simulator.moment.cost import StepModel
    from simulator.serving.engine import simulate

    monkeypatch.setattr(StepModel, "moment_s", property(lambda self: lambda *a: dt))  # the engine's step cost
    with pytest.raises(InputError, match="would not advance"):
        simulate(load_scenario_from(TINY))


# -- 5. memory ---------------------------------------------------------------------------------------
def test_sweep_grid_is_counted_before_it_is_built(tmp_path: Path) -> None:
    grid = {"workload.arrival.rate": {"from": 1, "to": 100, "steps": 1000},
            "serving.max_batch_size": {"from": 1, "to": 1000, "steps": 1000},
            "seed": {"from": 0, "to": 999, "steps": 1000}}  # 10^9 points
    p = write(tmp_path / "sw.yaml", {"base": TINY, "grid": grid})
    t0 = time.process_time()
    with pytest.raises(InputError, match="1,000,000,000 points"):
        sweep_mod.load_sweep(p)
    assert time.process_time() - t0 < 5


def test_run_that_cannot_fit_in_memory_is_refused_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path / "s.yaml", with_(TINY, "workload.num_requests", 100_000_000))
    monkeypatch.setattr(budget, "available_bytes", lambda: 8e9)
    err = one_line_exit_2(capsys, "run", str(p))
    assert err.startswith(f"momentsim: {p}: workload.num_requests: 100,000,000 requests need at least ") and "GB" in err
    # the bound counts at least the per-request arrays: 100M x BYTES_PER_REQUEST
    assert budget.needed_bytes(load_scenario(p)) >= 100_000_000 * budget.BYTES_PER_REQUEST


def test_run_too_big_for_the_address_space_is_one_line(tmp_path: Path) -> None:
    """The real process under a 1 GB address-space limit: 20M requests (2.7 GB at 136 bytes each)
    are refused before anything is drawn or simulated."""
    p = write(tmp_path / "s.yaml", with_(TINY, "workload.num_requests", 20_000_000))
    r = cli("run", str(p), mem_bytes=1 << 30, timeout=60)
    assert_one_line(r)
    assert "workload.num_requests" in r.stderr and "GB" in r.stderr


def test_out_of_memory_that_slipped_past_the_estimate_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import simulator.reports.run as run_mod

    def boom(*a: Any, **k: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(run_mod, "simulate", boom)
    assert "out of memory" in one_line_exit_2(capsys, "run", str(write(tmp_path / "s.yaml", TINY)))


# -- 6. tracebacks where one line is promised ------------------------------------------------------
def test_tp2_on_hardware_without_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hw = load_hardware("h100-sxm").model_dump(mode="json")
    hw.pop("link")
    hw.pop("profile")
    p = write(tmp_path / "s.yaml", with_(with_(TINY, "hardware", str(write(tmp_path / "hw.yaml", hw))), "serving.tp", 2))
    assert "link" in one_line_exit_2(capsys, "run", str(p))


@pytest.mark.parametrize("dotted,value", [
    ("seed", -1), ("workload.arrival", {"process": "gamma", "rate": 1.0, "cv": float("inf")}),
    ("workload.prompt_len", {"dist": "fixed", "value": 2**63}), ("workload.output_len.value", 2**64 + 5),
    ("workload.arrival.rate", True),  # 7: a boolean is not 1.0
    ("workload.prompt_len", {"dist": "lognormal", "mean": 100, "sigma": 1, "max": 2**70}),  # 7: negative lengths
])
def test_scenario_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], dotted: str, value: Any) -> None:
    p = write(tmp_path / "s.yaml", with_(TINY, dotted, value))
    err = one_line_exit_2(capsys, "run", str(p))
    assert str(p) in err and dotted.split(".")[0] in err


@pytest.mark.parametrize("config,needle", [
    ({"num_attention_heads": 64, "hidden_size": 32}, "multiple of num_attention_heads"),
    ({"num_attention_heads": 24, "hidden_size": 2048}, "multiple of num_attention_heads"),  # 7: no silent floor
    ({"num_attention_heads": 32, "hidden_size": 2048, "head_dim": 96}, None),  # head_dim given: fine
])
def test_head_counts(tmp_path: Path, config: dict[str, Any], needle: str | None) -> None:
    base = json.loads((ROOT / "simulator/moment/models/llama-3.2-1b.json").read_text())
    base.pop("num_key_value_heads", None)
    base.pop("head_dim", None)
    p = tmp_path / "m" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps({**base, **config}))
    if needle is None:
        assert load_model(str(p)).hd == 96
    else:
        with pytest.raises(InputError, match=needle):
            load_model(str(p))


def test_non_utf8_journal_lines_are_skipped(tmp_path: Path) -> None:
    j = tmp_path / "points.jsonl"
    j.write_bytes(b'{"key": "a", "status": "ok"}\n\xff\xfe garbage \x80\n{"key": "b", "status": "ok"}\n{"key": 1}\n')
    assert set(sweep_mod.read_done(j)) == {"a", "b"}


def test_out_that_is_a_file_or_under_one_fails_before_simulating(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import simulator.reports.run as run_mod

    monkeypatch.setattr(run_mod, "simulate", lambda *a, **k: pytest.fail("simulated before checking --out"))
    s = write(tmp_path / "s.yaml", TINY)
    f = write(tmp_path / "afile", "x")
    assert "is a file" in one_line_exit_2(capsys, "run", str(s), "--out", str(f))
    assert "is a file, not a folder" in one_line_exit_2(capsys, "run", str(s), "--out", str(f / "sub"))
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert "permission" in one_line_exit_2(capsys, "run", str(s), "--out", str(ro / "x"))


def test_full_disk_is_one_line_and_leaves_no_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import simulator.reports.run as run_mod

    def full(path: Path, *a: Any, **k: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_mod, "write_columns", full)
    out = tmp_path / "a" / "b"
    err = one_line_exit_2(capsys, "run", str(write(tmp_path / "s.yaml", TINY)), "--out", str(out))
    assert "no space left" in err
    assert not (tmp_path / "a").exists()  # both folders it made are gone again


# -- 7. silent wrong values ------------------------------------------------------------------------
def test_trace_length_beyond_int64_is_an_error_not_one_token(tmp_path: Path) -> None:
    p = write(tmp_path / "t.csv", "arrival_s,prompt_len,output_len\n0,1e19,5\n")
    with pytest.raises(InputError) as e:
        read_trace(str(p))
    assert e.value.field == "prompt_len (line 2)"


def test_requests_longer_than_the_model_serves_are_rejected() -> None:
    """Llama 3 8B serves 8192 tokens (max_position_embeddings): prompt + output beyond it is
    rejected as vLLM rejects it (max_model_len), counted by reason; the rest complete."""
    from simulator.serving.engine import R_CONTEXT, simulate
    from simulator.serving.workload import make_requests

    sc = load_scenario_from(with_(with_(with_(TINY, "model", "llama-3-8b"), "workload.num_requests", 40),
                                  "workload.prompt_len", {"dist": "uniform", "low": 7500, "high": 8000}))
    sc = sc.model_copy(update={"workload": sc.workload.model_copy(update={
        "output_len": load_scenario_from(with_(TINY, "workload.output_len", {"dist": "uniform", "low": 100,
                                                                            "high": 900})).workload.output_len})})
    req = make_requests(sc.workload, sc.seed)
    too_long = int(((req.prompt_len + req.output_len) > 8192).sum())
    assert 0 < too_long < 40  # the draw has both kinds
    r = simulate(sc)
    assert r.reject_reasons == {R_CONTEXT: too_long}
    assert int((r.requests["status"] == 0).sum()) == 40 - too_long


def test_unknown_efficiency_from_is_an_error_even_on_a_calibrated_base(tmp_path: Path) -> None:
    p = write(tmp_path / "hw.yaml", {"base": "h100-sxm", "name": "x", "efficiency_from": "h100-sxn"})
    with pytest.raises(InputError) as e:
        load_hardware(str(p))
    assert e.value.field == "efficiency_from"


def test_kernel_launch_us_bounds_every_kernel(tmp_path: Path) -> None:
    """A what-if part with 10 us launches: every eager kernel of a batch-1 decode lasts >= 10 us,
    so the norm category (fused kernels: 2 per layer + the final one) is >= (2L + 1) x 10 us.
    Inside a CUDA graph there is no launch gap: the graph floor stays."""
    model = load_model("llama-3.2-1b")
    slow = load_hardware(str(write(tmp_path / "hw.yaml", {"base": "h100-sxm", "name": "slow",
                                                         "device": {"kernel_launch_us": 10.0}})))
    fast = load_hardware("h100-sxm")
    b = Batch.of(decode=[(1, 128)])
    norms = 2 * model.num_hidden_layers + 1
    assert step_model(model, slow, mode="eager").cost(b).breakdown_ms["norm"] >= norms * 10e-3 * (1 - 1e-9)
    assert step_model(model, fast, mode="eager").cost(b).breakdown_ms["norm"] < norms * 10e-3
    assert step_model(model, slow).step_s(b) == step_model(model, fast).step_s(b)  # graph mode
    # below the fitted floors it changes nothing: the H100 profile's shortest kernel is 1.5691 us
    lower = load_hardware(str(write(tmp_path / "hw2.yaml", {"base": "h100-sxm", "name": "l",
                                                           "device": {"kernel_launch_us": 1.0}})))
    assert step_model(model, lower, mode="eager").step_s(b) == step_model(model, fast, mode="eager").step_s(b)


def test_elementwise_categories_cover_the_ops() -> None:
    """The categories an efficiency dict may name include every one the cost model looks up."""
    from hwmodels.spec import ELEMENTWISE
    from simulator.moment import kernels, ops

    assert set(ops.CATEGORIES) - {"host"} <= set(ELEMENTWISE)
    assert set(kernels.KV_WRITE.values()) <= set(ELEMENTWISE)


@pytest.mark.parametrize("argv,needle", [
    (["memory", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--utilization", "1.5"], "--utilization"),
    (["memory", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--utilization", "-1"], "--utilization"),
    (["memory", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--tp", "0"], "--tp"),
    (["step", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--pp", "0", "--decode", "1x1"], "--pp"),
])
def test_cli_flags_out_of_range(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and needle in err and "num_attention_heads" not in err


# -- 8. unreachable Ray ----------------------------------------------------------------------------
def test_unreachable_ray_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sw = write(tmp_path / "sw.yaml", {"base": TINY, "grid": {"workload.arrival.rate": [5.0]}})
    t0 = time.monotonic()
    p = cli("sweep", str(sw), "--ray", f"127.0.0.1:{port}", "--out", str(tmp_path / "out"), timeout=60)
    assert_one_line(p)
    assert "--ray" in p.stderr and time.monotonic() - t0 < 30
    assert not (tmp_path / "out").exists()


# -- 9. thrashing ----------------------------------------------------------------------------------
THRASH = {"model": "llama-3-8b", "hardware": "h100-sxm", "seed": 0,
          # 0.23 of 80 GB leaves ~0.6 GB of KV: 638 blocks, about eight 1,250-token requests
          "serving": {"max_batch_size": 64, "gpu_memory_utilization": 0.23},
          "workload": {"num_requests": 400, "arrival": {"process": "poisson", "rate": 20},
                       "prompt_len": {"dist": "lognormal", "mean": 1000, "sigma": 0.5, "max": 4000},
                       "output_len": {"dist": "lognormal", "mean": 250, "sigma": 0.5, "max": 1000}}}


def _thrash(scheduler: str, **serving: Any):
    from simulator.serving.engine import simulate

    return simulate(load_scenario_from(with_(THRASH, "serving", {**THRASH["serving"], "scheduler": scheduler,
                                                                 **serving})))


@pytest.mark.parametrize("scheduler", ["chunked", "continuous"])
def test_recomputed_tokens_are_counted_exactly(scheduler: str) -> None:
    """Conservation: every token a moment computes is a prompt token, a decode input (output_len
    - 1 per request: the first output comes out of the prefill) or one computed again after a
    recompute preemption dropped its KV."""
    r = _thrash(scheduler)
    q, done = r.requests, r.requests["status"] == 0
    assert done.all() and r.requests["preemptions"].sum() > 0  # the cache is tight enough to preempt
    useful = int(q["prompt_len"][done].sum() + q["output_len"][done].sum() - done.sum())
    assert int(r.moments["tokens"].sum()) == useful + r.recomputed_tokens


def test_chunked_prefill_does_not_thrash() -> None:
    """A tiny KV cache under chunked prefill: before the fix (a new request joined a step that had
    just preempted one, and took a chunk of whatever blocks happened to be free) this workload
    recomputed 2.89M tokens for 0.39M prompt tokens, with up to 54 preemptions of one request
    (the continuous scheduler: 65k, at most 2). As vLLM v1 does, a chunk is what the budget
    allows or none, and no request joins a step that preempted: the thrash is bounded like the
    continuous scheduler's."""
    chunked, continuous = _thrash("chunked"), _thrash("continuous")
    prompts = int(chunked.requests["prompt_len"].sum())
    assert chunked.recomputed_tokens < 0.25 * prompts
    assert chunked.requests["preemptions"].max() <= 3
    assert chunked.recomputed_tokens < 2 * continuous.recomputed_tokens + prompts / 100


def test_mfu_counts_useful_work_only() -> None:
    """MFU leaves out the recomputation, whose FLOPs are at least the dense layers' 2 x params per
    token (the GEMMs; attention adds a little at these lengths) and far from double that."""
    from simulator.reports.metrics import summarize

    r = _thrash("chunked")
    s = summarize(r)
    m = load_model("llama-3-8b")
    dense = 2 * (m.num_params() - m.embedding_params()) * r.recomputed_tokens
    assert dense <= r.recomputed_flops < 1.5 * dense
    devices = r.devices_per_replica * r.replicas
    assert s["mfu"] == pytest.approx((r.total_flops - r.recomputed_flops) / (r.makespan_s * r.peak_flops * devices))
    assert s["preemptions"]["recomputed_tokens"] == r.recomputed_tokens


# -- 10. special files -----------------------------------------------------------------------------
@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    p = tmp_path / "fifo.yaml"
    os.mkfifo(p)
    return p


def test_special_files_are_refused_at_once(tmp_path: Path, fifo: Path) -> None:
    for reader in (load_mapping, load_scenario, load_model, load_hardware, read_trace, sweep_mod.read_done):
        for path in (fifo, Path("/dev/zero"), tmp_path):
            arg: Any = Path(path) if reader is sweep_mod.read_done else str(path)
            with pytest.raises(InputError, match="not a regular file|folder"):
                reader(arg)


def test_fifo_given_to_the_cli_does_not_block(fifo: Path) -> None:
    p = cli("step", "--model", str(fifo), "--hardware", "h100-sxm", "--decode", "1x1", timeout=30)
    assert_one_line(p)
    assert "FIFO" in p.stderr
