"""`momentsim calibrate`: measure this machine's CPU or CUDA GPU, fit the efficiencies, write a
profile JSON that `--hardware PROFILE.json` accepts.

The flow: microbenchmarks (calibration.microbench) -> a base hardware (a preset with this
machine's name, cores or SMs, memory) -> calibration.fit.fit_profile -> host costs the fit does
not cover (per-step overhead) -> hwmodels.profile.Profile with fingerprint, provenance, the fit
report and every raw record. Only microbenchmarks are fitted; whole layers and steps are left
for `momentsim validate`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwmodels.errors import InputError, read_text
from hwmodels.load import load_hardware
from hwmodels.profile import SCHEMA, Profile
from hwmodels.spec import Hardware
from simulator.moment.model import ModelSpec

DEFAULT_BASE = {"cpu": "cpu", "cuda": "h100-sxm"}
# wave quantisation over 2-60 CPU cores is not how a CPU GEMM loses speed
CPU_FIXED = ("gemm_wave",)


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("--device", "", "calibration needs PyTorch: pip install 'momentsim[calibration]'") from None


def check_device(device: str) -> None:
    """A user's mistake (no GPU, no torch) is one line and exit code 2, not a traceback."""
    _need_torch()
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", "cuda", f"no CUDA GPU visible to PyTorch {torch.__version__} "
                         f"(CUDA build: {torch.version.cuda or 'none'}); use --device cpu")


# rows from which a CPU GEMM of a model's shapes is compute-bound (fp32 and bf16 alike, 2-core EPYC)
COMPUTE_BOUND_M = 256


def gemm_speedup(records: Sequence[dict[str, Any]], dtype: str) -> tuple[float, int]:
    """How much faster GEMMs run in `dtype` than in fp32 here: the median ratio of their times
    over the compute-bound shapes (M >= COMPUTE_BOUND_M) measured in both; (nan, 0) if none."""
    times: dict[tuple, dict[str, float]] = {}
    for r in records:
        if r["op"] == "gemm" and r["dtype"] in ("fp32", dtype) and float(r.get("m") or 0) >= COMPUTE_BOUND_M:
            key = (r["category"], r["m"], r.get("n"), r.get("k"), r.get("tp"))
            times.setdefault(key, {})[r["dtype"]] = float(r["ms"])
    ratios = [t["fp32"] / t[dtype] for t in times.values() if len(t) == 2 and t[dtype] > 0]
    return (float(np.median(ratios)), len(ratios)) if ratios else (float("nan"), 0)


def base_hardware(device: str, base: str | None, fp: dict[str, Any], facts: dict[str, Any], name: str,
                  records: Sequence[dict[str, Any]] = ()) -> tuple[Hardware, dict[str, str]]:
    """The preset the fit starts from, with what this machine says about itself.

    CPU: the machine's model name, the cores torch uses, its memory and last-level cache; the
    preset's FLOPs per cycle stay (the fit's gemm_compute absorbs the difference), and bf16's
    is fp32's times how much faster `records` show its GEMMs; memory bandwidth is never below
    what a plain stream measured here. CUDA: name, SM count, memory.
    """
    base = base or DEFAULT_BASE[device]
    hw = load_hardware(base, use_profile=False)
    dev = hw.device.model_dump()
    prov: dict[str, str] = {}
    date = fp["date"][:10]
    if device == "cpu":
        cpu = fp["cpu"]
        dev["name"] = f"{cpu['model_name']} ({facts.get('threads', cpu['cores_usable'])} cores)"
        dev["kind"] = "cpu"
        dev["compute_units"] = int(facts.get("threads", cpu["cores_usable"]))
        dev["memory_gb"] = round(cpu["memory_bytes"] / 1e9, 2)
        dev["cache_mb"] = round(cpu["llc_bytes"] / 2**20, 1)
        prov["device.name"] = f"/proc/cpuinfo model name, {date}"
        prov["device.compute_units"] = "cores this process may use (sched_getaffinity) = torch threads"
        prov["device.memory_gb"] = "/proc/meminfo MemTotal"
        prov["device.cache_mb"] = "sysfs cpu0 cache, the largest level"
        best = max(facts.get("copy_gbps", 0.0), facts.get("read_gbps", 0.0))
        if best > dev["memory_bw_gbps"]:
            dev["memory_bw_gbps"] = round(best, 1)
            prov["device.memory_bw_gbps"] = (f"measured: best plain stream (copy or read-only sum) on this "
                                             f"machine, {date}, above the base preset's figure")
        prov["device.flops_per_cycle"] = f"kept from the base preset {base!r}: the fit's gemm_compute absorbs the rest"
        ratio, shapes = gemm_speedup(records, "bf16")
        if shapes:  # bf16 has its own units here (AVX512-BF16, AMX): its GEMMs were measured
            fpc = dev["flops_per_cycle"]
            fpc["bf16"] = round(fpc["fp32"] * ratio, 2)
            prov["device.flops_per_cycle"] += (f"; bf16: fp32's x {ratio:.3f}, the median speed-up of the {shapes} "
                                               f"compute-bound GEMM shapes (M >= {COMPUTE_BOUND_M}) measured in both")
    else:
        g = fp["gpu"]
        dev["name"] = g["name"]
        dev["kind"] = "gpu"
        dev["compute_units"] = int(g["sm_count"])
        dev["memory_gb"] = round(g["memory_bytes"] / 1e9, 2)
        if g.get("l2_bytes"):
            dev["cache_mb"] = round(g["l2_bytes"] / 2**20, 1)
        prov["device.name"] = "torch.cuda.get_device_name"
        prov["device.compute_units"] = "torch.cuda.get_device_properties: multi_processor_count"
        prov["device.memory_gb"] = "torch.cuda.get_device_properties: total_memory"
        prov["device.flops_per_cycle"] = f"kept from the base preset {base!r} (datasheet peaks)"
    data = hw.model_dump()
    data["device"] = dev
    data["name"] = name
    cpu = fp.get("cpu") or {}
    if cpu.get("model_name"):  # the host is part of what was measured
        data["host"] = {**data["host"], "name": f"{cpu['model_name']} ({cpu.get('cores_usable', '?')} cores)"}
        prov["host.name"] = "/proc/cpuinfo of the machine measured"
    data["description"] = f"{dev['name']}: calibrated with PyTorch {fp['torch']} on {date}, from preset {base!r}"
    return Hardware.model_validate(data), prov


def _constrained(param: str, fitted: list[dict[str, Any]], kind: str, wide_n: int | None = None) -> int:
    """How many fitted records bear on a parameter (for the provenance line), from the fit's own
    grouping of parameters by op kind (a CPU's GEMMs and attention of another dtype set only
    their own dtype's parameter: fit.own_dtypes)."""
    from calibration.fit import COMM_KINDS, DEVICE_KINDS, GROUPS, HOST_KINDS, OWN_DTYPE_PARAM, apart

    field, _, dtype = param.partition(".")
    if field in OWN_DTYPE_PARAM.values():
        op = next(k for k, f in OWN_DTYPE_PARAM.items() if f == field)
        return sum(1 for r in fitted if r["op"] == op and r["dtype"] == dtype)
    other = {id(r) for r in apart(fitted, kind)}
    fitted = [r for r in fitted if id(r) not in other]
    if param == "elementwise_memory.index_copy":  # the cache writes of the attention records
        return sum(1 for r in fitted if r["op"] in ("attn_prefill", "attn_decode"))
    if param.startswith("elementwise_"):  # elementwise_memory.norm, elementwise_floor_us, ...
        cat = param.split(".", 1)[1] if "." in param else None
        return sum(1 for r in fitted if r["op"] == "stream" and cat in (None, r["category"]))
    if param == "gemv_memory":  # the one-token GEMMs among the GEMMs
        return sum(1 for r in fitted if r["op"] == "gemm" and 0 < float(r.get("m") or 0) <= 1)
    if param in ("wide_gemm_n", "wide_gemm_memory"):  # the GEMMs of several rows (at least wide_n wide)
        least = wide_n if param == "wide_gemm_memory" and wide_n else 0
        return sum(1 for r in fitted if r["op"] == "gemm" and float(r.get("m") or 0) > 1
                   and float(r.get("n") or 0) >= least)
    if param == "floor_us":
        kinds: tuple[str, ...] = DEVICE_KINDS
    elif param in ("dispatch_us", "op_dispatch_us", "view_us"):
        kinds = ("dispatch",)
    elif param in ("graph_floor_us", "sequence_us", "timer_us"):
        kinds = {"graph_floor_us": ("graph_floor",), "sequence_us": ("sequence",), "timer_us": DEVICE_KINDS}[param]
    elif param == "attn_softmax_cycles":
        kinds = ("attn_prefill",)
    else:
        kinds = tuple(k for g, names in GROUPS.items() if param in names
                      for k in (COMM_KINDS if g == "comm" else (g,)))
        kinds += tuple(k for k, f in HOST_KINDS.items() if f == param)
    return sum(1 for r in fitted if r["op"] in kinds)


# the per-step calls of the reference decoder that StepModel prices itself (kernels "pytorch")
STEP_CALLS = ("step_inputs", "sample")


def step_overhead_us(steps: list[dict[str, Any]], host: Any) -> float:
    """The per-step overhead: the scaffolding records (ids to the device, positions and RoPE
    rows, argmax, read-back) less what the cost model charges for their calls itself."""
    from simulator.moment import kernels as kn

    calls = sum(host.call_us(c.op) for part in STEP_CALLS for c in kn.calls("pytorch", part))
    return round(max(float(np.median([r["ms"] * 1e3 for r in steps])) - calls, 0.0), 2)


def build_profile(records: list[dict[str, Any]], fp: dict[str, Any], facts: dict[str, Any], device: str,
                  base: str | None, out: Path, plan_size: str, act_dtype: str | None = None) -> dict[str, Any]:
    """Fit `records` measured on the machine `fp` describes and write the profile (measure or
    refit: the same code). Returns the profile as a dict."""
    from calibration.fit import HOST_PARAMS, fit_profile, predict, rel_errors, summary

    date = fp["date"][:10]
    hw0, prov = base_hardware(device, base, fp, facts, out.stem, records)
    def used(r: dict[str, Any]) -> bool:
        """Fitted: not a copy, not a step; on a CPU a GEMM in another dtype only where that dtype's
        rate was measured (base_hardware), and element-wise kernels in the activations' dtype."""
        if r.get("fit", True) is False or r["op"] == "step":
            return False
        if device != "cpu" or not act_dtype or r["dtype"] == act_dtype:
            return True
        return r["op"] == "gemm" and r["dtype"] in hw0.device.flops_per_cycle or r["op"] not in ("gemm", "stream")

    fitted_recs = [r for r in records if used(r)]
    fix = CPU_FIXED if device == "cpu" else ()
    hw, report = fit_profile(fitted_recs, hw0, fix=fix)

    # host costs the fit leaves alone
    host_upd: dict[str, float] = {}
    steps = [r for r in records if r["op"] == "step"]
    if steps:
        host_upd["step_overhead_us"] = step_overhead_us(steps, hw.host)
        prov["host.step_overhead_us"] = (f"microbench {device} {date}: median of {len(steps)} per-step scaffolding "
                                         f"runs (ids, positions, RoPE rows, argmax, read-back) less the "
                                         f"calls the cost model charges for them")
    if device == "cpu":
        host_upd["graph_launch_us"] = hw.host.dispatch_us
        prov["host.graph_launch_us"] = "no graphs on a CPU: equal to host.dispatch_us"
    if hw.host.sequence_us is None:
        prov["host.sequence_us"] = ("not measured (no sequence record): 1.2 x view_us, the ratio measured on a "
                                    "2-core EPYC with the reference decoder (hwmodels.spec.SEQUENCE_PER_VIEW)")
    hw = hw.model_copy(update={"host": hw.host.model_copy(update=host_upd)})
    eff = hw.efficiency  # every eager kernel lasts at least kernel_launch_us: the shortest fitted floor
    dev_upd = {"kernel_launch_us": min(eff.floor_us, eff.elementwise_floor_us or eff.floor_us)}
    hw = hw.model_copy(update={"device": hw.device.model_copy(update=dev_upd), "profile": out.name})
    prov["device.kernel_launch_us"] = "equal to the shortest fitted floor (efficiency.elementwise_floor_us or floor_us)"

    from calibration.records import prepare

    counted = prepare(fitted_recs)
    for p, v in report["params"].items():
        key = f"host.{p}" if p in HOST_PARAMS else f"efficiency.{p}"
        n = _constrained(p, counted, hw.device.kind, hw.efficiency.wide_gemm_n)
        prov[key] = f"fit to {n} microbenchmark cases on {hw.device.name} {date} (value {v})"
    if device == "cpu":
        prov["efficiency.gemm_wave"] = "held at the base preset's value: no tile waves on a CPU"

    # the fit's view of every record, also the ones it did not use
    from calibration.fit import net_of_host

    records = net_of_host(prepare(records), hw.host)
    pred = predict(records, hw, report.get("timer_us", 0.0))
    meas = np.array([r["ms"] for r in records], dtype=float)
    err = rel_errors(pred, meas)
    for r, p in zip(records, pred, strict=True):
        r["pred_ms"] = round(float(p), 6) if np.isfinite(p) else None
    ok = np.array([used(r) for r in records], dtype=bool)
    for r, used_it in zip(records, ok, strict=True):
        r["fitted"] = bool(used_it)
    fit = {k: v for k, v in report.items() if k != "records"}
    fit.update({"fitted_records": int(ok.sum()), "records": len(records),
                "unfitted": summary(err[~ok]) if (~ok).any() else None, "facts": facts, "plan": plan_size,
                "fixed": list(fix),
                "note": ("errors are fractions (0.05 = 5 %); a CUDA record's prediction includes the fit's timer_us "
                         "(the fixed cost of a CUDA-event measurement, not part of the hardware); on a CPU a device "
                         "record's ms is its wall time less the host's tight-loop cost of its calls (wall_ms keeps "
                         "the raw time)")})
    sources = dict(hw.sources)
    sources.update({k: v for k, v in prov.items() if k.startswith(("device.", "host.", "efficiency."))})
    hw = hw.model_copy(update={"sources": sources})
    prof = Profile.model_validate({"schema": SCHEMA, "hardware": hw.model_dump(), "fingerprint": fp,
                                   "provenance": prov, "fit": _jsonable(fit), "measurements": _jsonable(records)})
    data = prof.model_dump(by_alias=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return data


def calibrate(device: str, out: str | Path, size: str = "full", base: str | None = None,
              models: list[ModelSpec] | None = None, progress_stream: Any = None, tty: bool | None = None,
              log: Any = None) -> dict[str, Any]:
    """Measure, fit, write the profile; returns the profile as a dict (what was written)."""
    check_device(device)
    from calibration import microbench as mb

    say = log or (lambda s: print(s, file=sys.stderr))
    out = Path(out)
    fp = mb.fingerprint(device)
    plan = mb.make_plan(device, size, models=models)
    say(f"calibrating {device} ({fp['gpu']['name'] if device == 'cuda' else fp['cpu']['model_name']}), "
        f"{size} plan")
    records, facts = mb.run_plan(plan, progress_stream, tty, log=say)
    fp["cpu"]["torch_threads"] = facts["threads"]
    fp["load_average_end"] = mb.loadavg()
    fp["base"] = base or DEFAULT_BASE[device]
    return build_profile(records, fp, facts, device, base, out, plan.size, plan.act_dtype)


# -- refitting saved measurements -------------------------------------------------------------------

_BASE_IN_DESCRIPTION = re.compile(r"from preset '([^']+)'")


def read_raw(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], str | None]:
    """Saved measurements: a profile JSON (its `measurements`), or a raw-records JSON (a list of
    records, or {"fingerprint": ..., "measurements": [...]}). Returns (records, fingerprint,
    facts, base preset if the file names one). Anything else is one InputError line."""
    p = Path(path)
    text = read_text(p)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        what = "truncated" if e.pos >= len(text.rstrip()) - 1 else f"not valid JSON near line {e.lineno}"
        raise InputError(str(p), "", f"{what}: expected a momentsim profile or a JSON list of raw records") from None
    if isinstance(data, list):
        data = {"measurements": data}
    if not isinstance(data, dict) or not isinstance(data.get("measurements"), list):
        raise InputError(str(p), "measurements", "expected a momentsim profile or a JSON list of raw records "
                         "(records with op and ms)")
    if "schema" in data and data["schema"] != SCHEMA:
        raise InputError(str(p), "schema", f"unknown profile schema {data['schema']!r}; allowed: {SCHEMA!r}")
    recs = data["measurements"]
    for i, r in enumerate(recs):
        if not isinstance(r, dict) or "op" not in r or "ms" not in r:
            raise InputError(str(p), f"measurements[{i}]", "a raw record needs op and ms (calibration.fit.record)")
    if not any(r["op"] in ("gemm", "stream", "attn_prefill", "attn_decode") for r in recs):
        raise InputError(str(p), "measurements", "no device records (gemm, stream, attention) to fit: these are "
                         "not momentsim calibrate measurements")
    fp = data.get("fingerprint") or {}
    if not isinstance(fp, dict) or fp.get("device") not in DEFAULT_BASE:
        raise InputError(str(p), "fingerprint.device", "the measurements must say their device: cpu or cuda "
                         "(the fingerprint a calibrate run writes)")
    facts = (data.get("fit") or {}).get("facts") or {}
    m = _BASE_IN_DESCRIPTION.search(str((data.get("hardware") or {}).get("description", "")))
    return recs, fp, facts, fp.get("base") or (m.group(1) if m else None)


def refit(raw: str | Path, out: str | Path, base: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Fit saved measurements again (no GPU, no torch needed) and write a profile."""
    recs, fp, facts, named = read_raw(raw)
    kind = fp["device"]
    if device is not None and device != kind:
        raise InputError(str(raw), "fingerprint.device", f"measured on a {kind} device; --device {device} "
                         f"refits {device} measurements only")
    base = base or named
    if base is not None:
        want = "cpu" if kind == "cpu" else "gpu"
        got = load_hardware(base, use_profile=False).device.kind
        if got != want:
            raise InputError("--base", base, f"a {got} preset; these measurements are of a {kind} device")
    fp = {**fp, "base": base or DEFAULT_BASE[kind], "refit": str(raw)}
    facts = dict(facts)
    if "threads" not in facts:
        facts["threads"] = (fp.get("cpu") or {}).get("torch_threads", 1)
    return build_profile(recs, fp, facts, kind, base, Path(out), str(facts.get("plan", "refit")),
                         "fp32" if kind == "cpu" else None)


def _jsonable(x: Any) -> Any:
    """Plain JSON types (numpy scalars and NaN become floats and null)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def summary_text(data: dict[str, Any], out: str | Path) -> str:
    """One screen: what was measured, the fitted parameters, how well they fit."""
    hw = data["hardware"]
    fit = data["fit"]
    facts = fit.get("facts", {})
    lines = [f"profile {out}", f"  device   {hw['device']['name']}  ({hw['device']['compute_units']} units, "
             f"{hw['device']['memory_gb']} GB, {hw['device']['memory_bw_gbps']} GB/s)",
             f"  cases    {fit['records']} measured, {fit['fitted_records']} fitted, {facts.get('skipped', 0)} skipped"
             f" as too slow/large, {facts.get('seconds', 0):.0f} s"]
    probe = facts.get("probe") or {}
    if probe.get("gflops"):  # how fast the machine ran while measured: two runs compare by it
        rates = ", ".join(f"{k} {v:g}" for k, v in probe["gflops"].items() if k != "fp8")
        lines.append(f"  probe    1024^3 GEMM {rates} GFLOP/s, copy {probe.get('copy_gbps', 0):g} GB/s (the speed "
                     f"while measured; a VM's moves)")
    if "bf16_ratio" in facts:
        lines.append(f"  bf16     GEMM rate {facts['bf16_ratio']:.2f}x fp32 ({'measured and fitted: its own units' if facts['bf16_ratio'] >= 0.8 else 'too slow: skipped'})")
    if facts.get("copy_gbps"):
        lines.append(f"  stream   copy {facts['copy_gbps']} GB/s, read {facts.get('read_gbps')} GB/s")
    lines.append("  fitted parameters:")
    for k, v in fit["params"].items():
        lines.append(f"    {k:32s} {v}")
    lines.append(f"    {'step_overhead_us':32s} {hw['host']['step_overhead_us']}")
    lines.append(f"  fit error: median {fit['median_abs_err'] * 100:.1f} %, worst {fit['worst_abs_err'] * 100:.1f} % "
                 f"over {fit['cases']} cases")
    for kind, s in fit.get("per_kind", {}).items():
        lines.append(f"    {kind:14s} {s['cases']:4d} cases  median {s['median_abs_err'] * 100:5.1f} %  "
                     f"worst {s['worst_abs_err'] * 100:6.1f} %")
    if facts.get("errors"):
        lines.append(f"  {len(facts['errors'])} cases failed, e.g. {facts['errors'][0]}")
    return "\n".join(lines)


def plot_fit(data: dict[str, Any], path: str | Path) -> Path:
    """The fitted profile against its own microbenchmarks: predicted vs measured, by op kind
    (fitted records filled, records kept out of the fit hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in data["measurements"] if r.get("pred_ms") and r["ms"] > 0 and r["op"] not in ("step",)]
    colors = {"gemm": "tab:blue", "attn_prefill": "tab:red", "attn_decode": "tab:purple", "stream": "tab:orange",
              "dispatch": "tab:gray", "graph_launch": "tab:brown", "allreduce": "tab:green", "send": "tab:olive"}
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    vals = [v for r in recs for v in (r["ms"], r["pred_ms"])]
    lo, hi = min(vals) / 1.5, max(vals) * 1.5
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=1)
    ax.fill_between(xs, xs / 1.15, xs * 1.15, color="0.85", label="±15 %")
    for kind, col in colors.items():
        for fitted in (True, False):
            sel = [r for r in recs if r["op"] == kind and bool(r.get("fitted")) == fitted]
            if sel:
                ax.scatter([r["ms"] for r in sel], [r["pred_ms"] for r in sel], s=14, label=kind if fitted else None,
                           color=col if fitted else "none", edgecolor=col, linewidth=0.7, zorder=3)
    if any(not r.get("fitted") for r in recs):
        ax.scatter([], [], s=14, color="none", edgecolor="k", linewidth=0.7, label="hollow: not fitted")
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured ms (device share)",
           ylabel="fitted model ms", title=f"{data['hardware']['name']}: microbenchmarks vs fitted model")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """`momentsim calibrate --device cpu|cuda --out PROFILE.json [--quick] [--base PRESET]`, or
    `momentsim calibrate --refit RAW.json --out PROFILE.json [--base PRESET]` (no GPU needed)."""
    out = Path(args.out)
    if out.suffix != ".json":
        raise InputError("--out", str(out), "a profile is a .json file")
    if args.base:
        load_hardware(args.base, use_profile=False)  # an unknown preset is an InputError here
    if getattr(args, "refit", None):
        data = refit(args.refit, out, args.base, args.device)
    else:
        if not args.device:
            raise InputError("--device", "", "give --device cpu|cuda to measure, or --refit RAW.json to refit")
        check_device(args.device)
        size = getattr(args, "size", None) or ("quick" if args.quick else "full")
        data = calibrate(args.device, out, size, args.base)
    print(summary_text(data, out))
    return 0


__all__ = ["cmd_calibrate", "calibrate", "refit", "read_raw", "build_profile", "base_hardware", "check_device",
           "summary_text", "step_overhead_us"]
