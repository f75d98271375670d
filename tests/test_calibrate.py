"""`momentsim calibrate`: a tiny CPU run end to end, the record format, the CUDA paths, errors."""

from __future__ import annotations

import argparse
import json
import math

import pytest

torch = pytest.importorskip("torch", reason="calibration needs PyTorch (pip install 'momentsim[calibration]')")

from calibration import microbench as mb  # noqa: E402
from calibration.calibrate import base_hardware, calibrate, cmd_calibrate  # noqa: E402
from calibration.fit import HOST_PARAMS  # noqa: E402
from hwmodels.load import load_hardware  # noqa: E402
from simulator.cli import main  # noqa: E402
from simulator.moment.ops import CATEGORIES  # noqa: E402

FIELDS = ("op", "category", "flops", "bytes", "launches", "m", "n", "seqs", "group", "dtype", "ms", "source")
KINDS = ("gemm", "attn_prefill", "attn_decode", "stream", "allreduce", "send", "dispatch", "graph_launch", "graph_floor",
         "sequence", "step")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; a CUDA GPU is present")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("cal") / "tiny-cpu.json"
    data = calibrate("cpu", out, size="tiny", log=lambda s: None)
    return out, data


def test_tiny_cpu_calibration_writes_a_profile_that_loads(tiny_profile):
    out, data = tiny_profile
    hw = load_hardware(str(out))
    assert hw.device.kind == "cpu"
    assert hw.device.compute_units == mb.cores()
    assert hw.profile == out.name
    assert data["schema"] == "momentsim-profile/1"
    fp = data["fingerprint"]
    assert fp["device"] == "cpu" and fp["torch"] == torch.__version__ and fp["cpu"]["model_name"]
    # every fitted parameter says what it was fitted to
    for p in data["fit"]["params"]:
        key = f"host.{p}" if p in HOST_PARAMS else f"efficiency.{p}"
        assert "microbenchmark cases" in data["provenance"][key]
    assert data["fit"]["fitted_records"] > 10
    assert math.isfinite(data["fit"]["median_abs_err"])
    # what was measured is physical: no x86 core does more than 64 fp32 FLOPs a cycle (two
    # AVX-512 FMA units) at 6 GHz, so no GEMM's measured wall time may beat that on this
    # machine's cores (the record's ms is the wall time less an estimate of its dispatch)
    top = mb.cores() * 64 * 6e9
    gemms = [r for r in data["measurements"] if r["op"] == "gemm"]
    assert gemms and all(r["wall_ms"] * 1e-3 >= r["flops"] / top for r in gemms)


def test_records_have_the_fit_format(tiny_profile):
    _, data = tiny_profile
    recs = data["measurements"]
    assert {r["op"] for r in recs} >= {"gemm", "attn_prefill", "attn_decode", "stream", "dispatch", "step"}
    for r in recs:
        assert all(f in r for f in FIELDS), r
        assert r["op"] in KINDS
        assert r["category"] in CATEGORIES or r["category"] == "copy"
    # a CPU device record is its wall time less the dispatch of its kernels
    for r in recs:
        if "wall_ms" in r:
            assert r["ms"] == pytest.approx(r["wall_ms"] - r["dispatch_ms"])
    # FLOPs and bytes are simulator.moment.ops' own: a GEMM is 2mnk FLOPs
    g = next(r for r in recs if r["op"] == "gemm")
    assert g["flops"] == pytest.approx(2 * g["m"] * g["n"] * g["k"])


def test_profile_round_trips_through_json(tiny_profile, tmp_path):
    out, _ = tiny_profile
    again = tmp_path / "again.json"
    again.write_text(json.dumps(json.loads(out.read_text())))
    assert load_hardware(str(again)) == load_hardware(str(out))


def test_cmd_calibrate_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = cmd_calibrate(argparse.Namespace(device="cpu", out=str(out), quick=True, base=None, size="tiny"))
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "fitted parameters" in text and "fit error" in text
    assert len(text.splitlines()) < 45  # one screen


def test_cpu_base_keeps_the_presets_peak():
    fp = mb.fingerprint("cpu")
    hw, prov = base_hardware("cpu", None, fp, {"threads": 2, "copy_gbps": 1.0, "read_gbps": 1.0}, "x")
    base = load_hardware("cpu", use_profile=False)
    assert hw.device.flops_per_cycle == base.device.flops_per_cycle
    assert hw.device.compute_units == 2
    assert hw.device.memory_bw_gbps == base.device.memory_bw_gbps  # a slower stream never lowers it
    assert "device.memory_bw_gbps" not in prov


def test_a_cpu_with_bf16_units_gets_the_measured_bf16_rate():
    # bf16's FLOPs per cycle: fp32's x the median speed-up of the compute-bound shapes (M >= 256)
    # measured in both dtypes: 2x, 3x and 2.4x here -> 2.4 -> 32 x 2.4 = 76.8. A memory-bound
    # shape (M = 8, 5x) and a shape measured in one dtype only do not count
    def gemm(dtype: str, m: int, n: int, ms: float) -> dict:
        return {"op": "gemm", "category": "ffn_up", "dtype": dtype, "m": m, "n": n, "k": 2048, "tp": 1, "ms": ms}

    recs = [gemm("fp32", 512, 4096, 10.0), gemm("bf16", 512, 4096, 5.0), gemm("fp32", 1024, 4096, 30.0),
            gemm("bf16", 1024, 4096, 10.0), gemm("fp32", 256, 8192, 12.0), gemm("bf16", 256, 8192, 5.0),
            gemm("fp32", 8, 4096, 5.0), gemm("bf16", 8, 4096, 1.0), gemm("bf16", 2048, 4096, 1.0)]
    fp = mb.fingerprint("cpu")
    hw, prov = base_hardware("cpu", None, fp, {"threads": 2}, "x", recs)
    assert hw.device.flops_per_cycle == {"fp32": 32.0, "bf16": 76.8}
    assert hw.device.peak_flops("bf16") == pytest.approx(3e9 * 2 * 76.8)
    assert "x 2.400" in prov["device.flops_per_cycle"] and "3 compute-bound" in prov["device.flops_per_cycle"]
    fp32_only, _ = base_hardware("cpu", None, fp, {"threads": 2}, "x", recs[:1] + recs[6:7])
    assert fp32_only.device.flops_per_cycle == {"fp32": 32.0}


@no_cuda
def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["calibrate", "--device", "cuda", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cuda" in err.lower()
    assert main(["validate", "--device", "cuda", "--hardware", "h100-sxm", "--out", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_bad_profile_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "momentsim-profile/0", "hardware": {}}))
    assert main(["step", "--model", "llama-3.2-1b", "--hardware", str(bad), "--decode", "1x10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "schema" in err
    bad.write_text("{not json")
    assert main(["step", "--model", "llama-3.2-1b", "--hardware", str(bad), "--decode", "1x10"]) == 2


def test_cuda_plan_builds_without_a_gpu():
    """The CUDA paths import and plan their cases with no GPU (tensors are made lazily)."""
    plan = mb.make_plan("cuda", "full")
    assert plan.gemm_dtypes == ["bf16", "fp16", "fp8"] and plan.tp == [1, 2, 4, 8]
    speed = mb.Speed({"bf16": 7e14, "fp16": 7e14, "fp8": 1.4e15, "fp32": 5e13}, 3e12)
    cases = mb.gemm_cases(plan.gemm_models[:2], plan.tokens, plan.gemm_dtypes, "cuda", speed, mb.Pool(), plan.tp)
    assert all(c.m % 16 == 0 for c in cases if c.dtype == "fp8")  # torch._scaled_mm wants 16 | M
    assert {c.category for c in cases} == {"qkv_proj", "o_proj", "ffn_up", "ffn_down", "lm_head"}
    att = mb.attention_cases(plan.models[:1], plan.prefill, plan.decode, "bf16", "cuda", speed, 1e12)
    assert {c.op for c in att} == {"attn_prefill", "attn_decode"}
    # a GEMM case is 2mnk FLOPs; its weights (n x k) are read whole, at least once
    for c in cases:
        k = c.extra["k"]
        assert c.flops == 2 * c.m * c.n * k
        assert c.bytes >= c.n * k


def test_collectives_run_over_gloo():
    """The all-reduce/send worker, exercised on CPU processes (the CUDA run uses NCCL)."""
    recs = mb.collective_records(2, [4096, 65536], reps=2, backend="gloo")
    # by hand: 2 ranks make one group of 2; each size is all-reduced and sent once
    assert sorted((r["op"], r["bytes"], r["group"]) for r in recs) == [
        ("allreduce", 4096.0, 2), ("allreduce", 65536.0, 2), ("send", 4096.0, 2), ("send", 65536.0, 2)]
    assert all(r["ms"] > 0 for r in recs)


@pytest.mark.cuda
@needs_cuda
def test_tiny_cuda_calibration(tmp_path):
    out = tmp_path / "tiny-cuda.json"
    data = calibrate("cuda", out, size="tiny", log=lambda s: None)
    assert load_hardware(str(out)).device.kind == "gpu"
    assert {r["op"] for r in data["measurements"]} >= {"gemm", "dispatch", "graph_launch"}


def test_a_cpus_bf16_attention_is_estimated_at_its_own_slow_rate():
    # a CPU's bf16 SDPA converts to fp32 (decode 45x under the fp32 GEMM probe's rate): estimated
    # at bf16's GEMM rate its cases passed the per-case time cap and a full calibration ran 3x its
    # estimate; at their own rate the slowest are skipped like any other too-slow case
    from calibration.microbench import CPU_BF16_SDPA_SLOWDOWN, MINI, Speed, attention_cases

    sp = Speed({"fp32": 1e11, "bf16": 4e11}, 2e10)
    f32 = attention_cases([MINI], [(1, 128)], [(4, 512)], "fp32", "cpu", sp, 1e12)
    b16 = attention_cases([MINI], [(1, 128)], [(4, 512)], "bf16", "cpu", sp, 1e12)
    assert [c.op for c in b16] == ["attn_prefill", "attn_decode"] == [c.op for c in f32]
    for c in b16:
        slow = CPU_BF16_SDPA_SLOWDOWN["prefill" if c.op == "attn_prefill" else "decode"]
        assert c.est_s == pytest.approx(c.flops * slow / 1e11 + c.bytes / 2e10 + 4 * 5e-6, rel=1e-12)
    assert b16[1].est_s > 10 * f32[1].est_s
