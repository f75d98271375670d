"""calibration.fit: recovers known parameters from synthetic measurements; profiles round-trip.

Most synthetic measurements are op_time itself at chosen parameters, so the fit must find those
parameters again (to 2 %): this checks the optimiser, the bounds and the grouping, not the cost
model, whose formulas tests/test_roofline.py checks by hand (the CPU GEMV case below writes its
measurements by hand too).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from calibration.fit import bounds, fit_profile, minimize, predict, record, set_params
from hwmodels.errors import InputError
from hwmodels.load import load_hardware, read_profile
from hwmodels.profile import SCHEMA, Profile
from hwmodels.roofline import op_time
from hwmodels.spec import Hardware

BASE = load_hardware("h100-sxm", use_profile=False)
TRUE = {
    "gemm_compute": 0.71, "gemm_memory": 0.86, "softmax_p": 3.0, "gemm_wave": 0.4, "floor_us": 3.5,
    "elementwise_memory.norm": 0.33, "elementwise_row_gbps.norm": 9.0, "elementwise_cache_gain.norm": 0.3,
    "elementwise_memory.residual_add": 0.8, "elementwise_cache_gain.residual_add": 0.2,
    "elementwise_floor_us": 1.5, "comm_bw": 0.7, "comm_latency_us": 6.0,
}


def _hw(values: dict[str, float]) -> Hardware:
    """BASE with these efficiencies and no launch bound under them (the floors are the truth)."""
    dev = BASE.device.model_copy(update={"kernel_launch_us": 0.0})
    return BASE.model_copy(update={"efficiency": set_params(BASE.efficiency, values), "device": dev})


def _synthetic(hw: Hardware) -> list[dict]:
    """Records whose ms is op_time at `hw`: GEMMs across the ridge, streams across L2 and the
    per-row regime, all-reduces from latency- to bandwidth-bound, eager dispatch."""
    recs = []
    for n, k in ((4096, 4096), (12288, 4096), (8192, 1024), (28672, 8192)):
        for m in (1, 8, 32, 96, 128, 200, 256, 384, 512, 1024, 2048, 4096):
            fl, by = 2.0 * m * n * k, 2.0 * (n * k + m * (n + k))
            recs.append(record("gemm", 0, category="ffn_up", flops=fl, bytes=by, m=m, n=n, dtype="fp16"))
    for cat, reads in (("norm", 1), ("residual_add", 2)):
        for h in (4096, 8192):
            for m in (1, 16, 64, 256, 512, 1024, 2048, 4096, 8192):
                recs.append(record("stream", 0, category=cat, bytes=2.0 * (reads + 1) * m * h, m=m, dtype="fp16"))
    for g in (2, 4, 8):
        for b in np.geomspace(2e3, 6.4e7, 12):
            recs.append(record("allreduce", 0, category="comm", bytes=float(b), group=g, dtype="fp16"))
    for r in recs:
        r["ms"] = float(op_time(r["op"], r["category"], r["flops"], r["bytes"], 1, r["dtype"], hw, m=r["m"],
                                n=r["n"], group=r["group"])) * 1e3
    recs.append(record("dispatch", 23.0e-3 * 100, category="host", launches=100))
    return recs


def test_fit_recovers_known_parameters():
    truth = _hw(TRUE)
    truth = truth.model_copy(update={"efficiency": truth.efficiency.model_copy(update={"comm_hops": "tree"})})
    recs = _synthetic(truth)
    fitted, report = fit_profile(recs, BASE)
    got = report["params"]
    for name, want in TRUE.items():
        assert got[name] == pytest.approx(want, rel=0.02), name
    assert got["comm_hops"] == "tree"
    assert fitted.host.dispatch_us == pytest.approx(23.0)
    assert report["median_abs_err"] < 0.005
    assert report["cases"] == len(recs)


def test_fix_holds_parameters():
    recs = [r for r in _synthetic(_hw(TRUE)) if r["op"] == "gemm"]
    fitted, report = fit_profile(recs, _hw({"softmax_p": 3.0, "gemm_wave": 0.4}), fix={"softmax_p", "gemm_wave"})
    assert "softmax_p" not in report["params"] and fitted.efficiency.softmax_p == 3.0
    assert report["params"]["gemm_compute"] == pytest.approx(0.71, rel=0.02)


def test_predict_prices_what_it_can():
    recs = [record("gemm", 1.0, category="o_proj", flops=2e12, bytes=1e9, m=4096, n=8192, dtype="bf16"),
            record("dispatch", 1.0, category="host", launches=10), record("step", 1.0, category="host")]
    p = predict(recs, BASE)
    peak = BASE.device.peak_flops("bf16") * BASE.efficiency.gemm_compute
    assert p[0] > 2e12 / peak * 1e3  # at least the compute bound
    assert p[1] == pytest.approx(BASE.host.dispatch_us * 10 * 1e-3)
    assert np.isnan(p[2])


def test_minimize_respects_bounds():
    x = minimize(lambda v: float((v[0] - 5.0) ** 2), [0.5], [0.0], [1.0])
    assert 0.99 < x[0] <= 1.0
    assert bounds("gemm_compute") == pytest.approx((1e-3, 1.0))
    assert bounds("softmax_p") == (1.0, 64.0)


def _profile() -> Profile:
    return Profile.model_validate({"schema": SCHEMA, "hardware": _hw(TRUE).model_dump(),
                                   "fingerprint": {"name": "synthetic"}, "provenance": {"efficiency": "test"},
                                   "fit": {"median_abs_err": 0.0}, "measurements": [{"kind": "x", "rows": [[1, 2]]}]})


def test_profile_round_trips_through_json():
    p = _profile()
    assert Profile.model_validate_json(p.model_dump_json(by_alias=True)) == p


def test_load_hardware_reads_a_profile(tmp_path):
    path = tmp_path / "synthetic.json"
    path.write_text(_profile().model_dump_json(by_alias=True), encoding="utf-8")
    hw = load_hardware(str(path))
    assert hw.efficiency.gemm_compute == pytest.approx(0.71)
    assert hw.efficiency.elementwise_row_gbps["norm"] == pytest.approx(9.0)


@pytest.mark.parametrize("text, field", [
    ("{not json", ""),
    (json.dumps({"schema": "momentsim-profile/0", "hardware": {}}), "schema"),
    (json.dumps({"hardware": {}}), "schema"),
])
def test_bad_profiles_are_one_line_input_errors(tmp_path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_profile(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert e.value.field == field


def test_malformed_profile_field_is_an_input_error(tmp_path):
    data = json.loads(_profile().model_dump_json(by_alias=True))
    data["hardware"]["efficiency"]["gemm_compute"] = 1.7  # above the bound le=1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_hardware(str(path))
    assert "\n" not in str(e.value) and "gemm_compute" in str(e.value)


def test_committed_profile_reproduces_its_fit_report():
    """calibration/profiles/h100-sxm.json keeps its measurements: re-pricing them with its own
    hardware gives back the stored fit errors (the profile and the cost model agree)."""
    from calibration.fit import rel_errors, summary
    from calibration.published import PROFILE_PATH, records_from_measurements

    prof = read_profile(PROFILE_PATH)
    recs = records_from_measurements([m for m in prof.measurements if m.get("role") in ("fit", None)])
    err = rel_errors(predict(recs, prof.hardware), np.array([r["ms"] for r in recs]))
    s = summary(err)
    assert s["cases"] == prof.fit["cases"]
    assert s["median_abs_err"] == pytest.approx(prof.fit["median_abs_err"], abs=1e-4)
    assert prof.fingerprint["source"] == "published measurements, not a momentsim calibrate run"
    assert prof.provenance["efficiency.attn_prefill_compute"].startswith("from calibration/profiles/h200-sxm.json")


def test_fit_recovers_a_cpu_gemv_efficiency():
    """On a CPU the one-token GEMMs (matrix-vector) stream weights at their own fraction of
    bandwidth; synthetic records made with known values give them back."""
    from hwmodels.load import load_hardware
    from hwmodels.roofline import op_time

    cpu = load_hardware("cpu", use_profile=False)
    cpu = cpu.model_copy(update={"efficiency": cpu.efficiency.model_copy(update={"softmax_p": 1.0})})
    true = cpu.model_copy(update={"efficiency": cpu.efficiency.model_copy(
        update={"gemm_memory": 0.3, "gemv_memory": 0.65, "gemm_compute": 0.9, "softmax_p": 1.0})})
    recs = []
    # the "measurements" by hand, not from op_time: with softmax_p 1 and no waves on this preset
    # a GEMM takes FLOPs / (peak x 0.9) + bytes / (bandwidth x (0.65 one row, else 0.3)) + the floor
    assert cpu.efficiency.gemm_wave == 0.0
    peak, bw, floor = cpu.device.peak_flops("fp32"), cpu.device.bandwidth, cpu.efficiency.floor_us * 1e-6
    for m in (1, 1, 1, 2, 4, 16, 64, 256, 1024, 4096):
        for n, k in ((2048, 2048), (8192, 2048), (2048, 8192)):
            fl, by = 2.0 * m * n * k, 4.0 * (n * k + m * (n + k))
            t = fl / (peak * 0.9) + by / (bw * (0.65 if m == 1 else 0.3)) + floor
            assert float(op_time("gemm", "ffn_up", fl, by, 1, "fp32", true, m=m, n=n)) == pytest.approx(t, rel=1e-12)
            recs.append(record("gemm", t * 1e3, category="ffn_up", flops=fl, bytes=by, m=m, n=n, dtype="fp32"))
    hw, _ = fit_profile(recs, cpu, fix={"floor_us", "softmax_p", "gemm_wave"})
    assert hw.efficiency.gemv_memory == pytest.approx(0.65, rel=0.02)
    assert hw.efficiency.gemm_memory == pytest.approx(0.3, rel=0.02)
    assert hw.efficiency.wide_gemm_n is None  # one rate at every width: no knee is invented


def test_fit_finds_the_width_where_a_cpu_blas_slows():
    """Blocked GEMMs of several rows at least 8192 wide stream at 0.2 of bandwidth, narrower ones
    at 0.35 (times by hand, as the 2-core EPYC's MKL behaves): the fit recovers the knee among
    the measured widths and both rates."""
    from hwmodels.load import load_hardware

    cpu = load_hardware("cpu", use_profile=False)
    cpu = cpu.model_copy(update={"efficiency": cpu.efficiency.model_copy(update={"softmax_p": 1.0})})
    peak, bw, floor = cpu.device.peak_flops("fp32"), cpu.device.bandwidth, cpu.efficiency.floor_us * 1e-6
    recs = []
    for m in (1, 2, 4, 8, 32, 128, 512):
        for n, k in ((1024, 4096), (2048, 2048), (6144, 4096), (8192, 1024), (16384, 2048), (32000, 1024)):
            fl, by = 2.0 * m * n * k, 4.0 * (n * k + m * (n + k))
            mem = 0.6 if m == 1 else 0.2 if n >= 8192 else 0.35
            t = fl / (peak * 0.9) + by / (bw * mem) + floor
            recs.append(record("gemm", t * 1e3, category="ffn_up", flops=fl, bytes=by, m=m, n=n, dtype="fp32"))
    hw, report = fit_profile(recs, cpu, fix={"floor_us", "softmax_p", "gemm_wave"})
    e = hw.efficiency
    assert e.wide_gemm_n == 8192 and report["params"]["wide_gemm_n"] == 8192
    assert e.wide_gemm_memory == pytest.approx(0.2, rel=0.02)
    assert e.gemm_memory == pytest.approx(0.35, rel=0.02)
    assert e.gemv_memory == pytest.approx(0.6, rel=0.02)
    assert e.gemm_compute == pytest.approx(0.9, rel=0.02)
