"""Hardware presets: every one loads, its derived peaks and bandwidths match the datasheets,
every number says where it came from, and a what-if part built with `base:` changes only what it says."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hwmodels.load import PRESET_DIR, load_hardware, preset_names

# The presets the contract promises (DESIGN.md) plus the TPU and the Sapphire Rapids CPU.
EXPECTED = {
    "h100-sxm", "h100-pcie", "h200-sxm", "a100-sxm-80gb", "a100-pcie-40gb", "a40", "l4", "l40s",
    "b200", "mi300x", "tpu-v5e", "cpu", "xeon-8480", "gb200",
}

# Dense (not sparse) bf16 peaks in TFLOP/s, from calibration/data/datasheets.md
# (NVIDIA and AMD datasheets); TPU v5e from Google Cloud's TPU v5e documentation.
BF16_TFLOPS = {
    "h100-sxm": 989,
    "h100-pcie": 756,
    "h200-sxm": 989,
    "a100-sxm-80gb": 312,
    "a100-pcie-40gb": 312,
    "a40": 149.7,
    "l4": 121,
    "l40s": 362,
    "b200": 2250,
    "gb200": 2500,
    "mi300x": 1307,
    "tpu-v5e": 197,
}

# Dense fp8 peaks in TFLOP/s, datasheets.md; parts without fp8 units fall back to bf16.
FP8_TFLOPS = {
    "h100-sxm": 1979, "h100-pcie": 1513, "h200-sxm": 1979, "l4": 242, "l40s": 733, "b200": 4500,
    "gb200": 5000, "mi300x": 2615, "a100-sxm-80gb": 312, "a40": 149.7,
}

# Dense fp4 (NVFP4/MXFP4) peaks in TFLOP/s: DGX B200 144 PFLOP/s sparse for 8 GPUs, GB200 NVL72
# 1,440 PFLOP/s sparse for 72 (datasheets.md); Hopper has no fp4 units: fp4 weights run bf16 GEMMs.
FP4_TFLOPS = {"b200": 9000, "gb200": 10000, "h100-sxm": 989, "h200-sxm": 989}

# Memory bandwidth in GB/s, datasheets.md (B200: 7.7-8 TB/s there; the preset takes DGX B200's 8),
# TPU v5e: Google Cloud docs; Xeon 8480+: 8 channels x DDR5-4800 x 8 bytes.
BANDWIDTH_GBPS = {
    "h100-sxm": 3350,
    "h100-pcie": 2000,
    "h200-sxm": 4800,
    "a100-sxm-80gb": 2039,
    "a100-pcie-40gb": 1555,
    "a40": 696,
    "l4": 300,
    "l40s": 864,
    "b200": 8000,
    "gb200": 8000,
    "mi300x": 5300,
    "tpu-v5e": 819,
    "xeon-8480": 8 * 4.8 * 8,
}

# Memory capacity in GB (vendors' nominal figures), datasheets.md.
MEMORY_GB = {
    "h100-sxm": 80, "h100-pcie": 80, "h200-sxm": 141, "a100-sxm-80gb": 80, "a100-pcie-40gb": 40,
    "a40": 48, "l4": 24, "l40s": 48, "b200": 180, "gb200": 186, "mi300x": 192, "tpu-v5e": 16,
}


def _raw(name: str) -> dict[str, Any]:
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8"))


def _numeric_leaves(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _numeric_leaves(v, path + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(path)
    return out


def _sourced(path: str, sources: dict[str, str]) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in sources for i in range(len(parts), 0, -1))


def test_all_presets_present():
    assert EXPECTED <= set(preset_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_loads(name):
    hw = load_hardware(name, use_profile=False)
    assert hw.name == name
    assert hw.device.peak_flops("fp32") > 0
    assert hw.price_per_hour is not None and hw.price_per_hour > 0


@pytest.mark.parametrize("name", sorted(BF16_TFLOPS))
def test_bf16_peak_matches_datasheet(name):
    dev = load_hardware(name, use_profile=False).device
    assert dev.peak_flops("bf16") == pytest.approx(BF16_TFLOPS[name] * 1e12, rel=0.01)


@pytest.mark.parametrize("name", sorted(FP8_TFLOPS))
def test_fp8_peak_matches_datasheet(name):
    dev = load_hardware(name, use_profile=False).device
    assert dev.peak_flops("fp8") == pytest.approx(FP8_TFLOPS[name] * 1e12, rel=0.01)


@pytest.mark.parametrize("name", sorted(FP4_TFLOPS))
def test_fp4_peak_matches_datasheet(name):
    dev = load_hardware(name, use_profile=False).device
    assert dev.peak_flops("fp4") == pytest.approx(FP4_TFLOPS[name] * 1e12, rel=0.01)


def test_peak_is_clock_times_units_times_fpc():
    # H100 SXM: 1.83 GHz x 132 SMs x 4096 dense bf16 FLOPs/cycle/SM = 989.4 TFLOP/s
    dev = load_hardware("h100-sxm", use_profile=False).device
    assert dev.peak_flops("bf16") == pytest.approx(1.83e9 * 132 * 4096)
    # A100 has no fp8 units: fp8 falls back to bf16; int8 is 624 TOPS
    a100 = load_hardware("a100-sxm-80gb", use_profile=False).device
    assert "fp8" not in a100.flops_per_cycle
    assert a100.peak_flops("int8") == pytest.approx(624e12, rel=0.01)


@pytest.mark.parametrize("name", sorted(BANDWIDTH_GBPS))
def test_bandwidth_matches_datasheet(name):
    dev = load_hardware(name, use_profile=False).device
    assert dev.memory_bw_gbps == pytest.approx(BANDWIDTH_GBPS[name], rel=0.005)


@pytest.mark.parametrize("name", sorted(MEMORY_GB))
def test_memory_matches_datasheet(name):
    assert load_hardware(name, use_profile=False).device.memory_gb == MEMORY_GB[name]


def test_cpu_presets():
    cpu = load_hardware("cpu", use_profile=False).device
    assert cpu.kind == "cpu" and cpu.compute_units == 2
    assert cpu.flops_per_cycle["fp32"] == 32  # AVX2: 2 FMA units x 8 lanes x 2
    xeon = load_hardware("xeon-8480", use_profile=False).device
    assert xeon.kind == "cpu" and xeon.compute_units == 56
    assert xeon.flops_per_cycle["fp32"] == 64  # AVX-512: 2 FMA units x 16 lanes x 2
    assert xeon.flops_per_cycle["bf16"] == 1024  # AMX


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_number_has_a_source(name):
    raw = _raw(name)
    sources = raw.get("sources", {})
    body = {k: v for k, v in raw.items() if k != "sources"}
    missing = [p for p in _numeric_leaves(body) if not _sourced(p, sources)]
    # every numeric device field, including ones left at their defaults
    dev = load_hardware(name, use_profile=False).device.model_dump()
    missing += [p for p in _numeric_leaves(dev, "device.") if not _sourced(p, sources)]
    assert not missing, f"{name}: no sources entry for {sorted(set(missing))}"
    # and no source for a field that is not there
    leaves = set(_numeric_leaves(body))
    stale = [k for k in sources if not any(p == k or p.startswith(k + ".") for p in leaves)]
    assert not stale, f"{name}: sources for absent fields {stale}"


def test_base_override_doubles_bandwidth(tmp_path):
    p = tmp_path / "h100-2x-bw.yaml"
    p.write_text("base: h100-sxm\ndevice: {memory_bw_gbps: 6700}\n", encoding="utf-8")
    what_if = load_hardware(str(p))
    base = load_hardware("h100-sxm")
    assert what_if.device.bandwidth == pytest.approx(2 * base.device.bandwidth)
    a, b = what_if.model_dump(), base.model_dump()
    a["device"].pop("memory_bw_gbps")
    b["device"].pop("memory_bw_gbps")
    # where a calibration profile is committed, the two paths record it under different names
    a.pop("profile")
    b.pop("profile")
    assert a == b


def test_cpu_core_override(tmp_path):
    p = tmp_path / "cpu16.yaml"
    p.write_text("base: cpu\ndevice: {compute_units: 16}\n", encoding="utf-8")
    hw = load_hardware(str(p))
    base = load_hardware("cpu")
    assert hw.device.compute_units == 16
    assert hw.device.peak_flops("fp32") == pytest.approx(8 * base.device.peak_flops("fp32"))


def test_same_family_parts_borrow_fitted_efficiencies():
    # H100 PCIe is Hopper like the calibrated H100 SXM: its fitted fractions of peak carry over,
    # applied to the part's own peaks and bandwidth; the H200 has a profile of its own
    h100 = load_hardware("h100-sxm")
    hw = load_hardware("h100-pcie")
    assert hw.efficiency == h100.efficiency and "h100-sxm" in (hw.profile or "")
    assert hw.device.memory_bw_gbps != h100.device.memory_bw_gbps
    h200 = load_hardware("h200-sxm")
    assert h200.profile == "calibration/profiles/h200-sxm.json" and h200.efficiency != h100.efficiency
    # a part from another family keeps its own (default) efficiencies
    assert load_hardware("a100-sxm-80gb").efficiency != h100.efficiency
