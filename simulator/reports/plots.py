"""Plots of one run for a person to read (matplotlib, Agg backend: no display needed).

latency_cdf.png   TTFT, TPOT and E2E distributions (CDF), with p50/p99 and SLO bounds
timeline.png      output throughput, KV-cache and GPU use, queue and running requests over time
moment_hist.png   how long moments are, prefill vs decode (log x)
breakdown.png     where the time of prefill and decode moments goes, by operation
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from simulator.reports.metrics import num, overload, per_request  # noqa: E402

if TYPE_CHECKING:
    from simulator.serving.result import SimResult

DPI = 110
COLORS = {"prefill": "#d95f02", "decode": "#1b9e77", "mixed": "#7570b3"}


def _title(r: SimResult) -> str:
    sc = getattr(r, "scenario", None)
    if sc is None or not hasattr(sc, "serving"):
        return ""
    s = sc.serving
    return (f"{sc.model} on {sc.hardware} (tp={s.tp}, pp={s.pp}, {s.replicas} replica"
            f"{'s' if s.replicas > 1 else ''}, {s.scheduler} batching)")



def _overload_note(r: SimResult) -> str:
    """A red line for the figures of a run whose queue grew without bound (metrics.overload)."""
    ov = overload(r)
    if not ov["overloaded"]:
        return ""
    return (f"OVERLOADED: {num(ov['arrival_rate'])} req/s arrived, {num(ov['completion_rate'])} req/s completed; "
            "the queue grows, latency depends on the run's length")


def _flag(fig: Any, note: str) -> None:
    if note:
        fig.text(0.5, 0.001, note, ha="center", va="bottom", color="#d62728", fontsize=10, fontweight="bold")


def _device(r: SimResult) -> str:
    """GPU, unless the hardware is a CPU or a TPU (the same plots serve both)."""
    try:
        from hwmodels.load import load_hardware

        return load_hardware(r.scenario.hardware).device.kind.upper()
    except Exception:  # noqa: BLE001 - a label is not worth failing a run for
        return "device"


def _log_x(ax: Any) -> None:
    """Log x axis labelled in plain numbers (20, 50, 100 ms rather than 2x10^1); a narrow range
    gets ticks inside each decade too (2, 5 or 2, 3, 5, 7), else it would show one or none."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    span = hi / max(lo, 1e-300)
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if span < 15 else (1.0, 2.0, 5.0) if span < 150 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}" if x >= 1 else f"{x:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))


def save(fig: Any, path: Path) -> Path:
    """Every momentsim figure is written the same way: DPI, tight box, the figure closed."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def latency_cdf(r: SimResult, path: Path) -> Path:
    lat = per_request(r)
    slo = getattr(getattr(r, "scenario", None), "slo", None)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key, name in zip(axes, ("ttft_ms", "tpot_ms", "e2e_ms"),
                             ("Time to first token", "Time per output token", "End-to-end latency"),
                             strict=True):
        v = np.sort(lat[key][np.isfinite(lat[key])])
        ax.set_title(name)
        if v.size == 0:
            _empty(ax, "no requests with this latency")
            continue
        y = np.arange(1, v.size + 1) / v.size
        if v.size > 4000:  # 4000 quantiles draw the same curve as a million points, much faster
            keep = np.unique(np.linspace(0, v.size - 1, 4000).astype(int))
            v_draw, y_draw = v[keep], y[keep]
        else:
            v_draw, y_draw = v, y
        v_draw, y_draw = np.concatenate([[v_draw[0]], v_draw]), np.concatenate([[0.0], y_draw])  # from 0
        ax.step(v_draw, y_draw, where="post", color="#1f77b4", lw=1.8, label=f"{v.size} requests")
        p50, p99 = np.percentile(v, [50, 99])
        ax.axvline(p50, color="0.35", ls=":", lw=1.2, label=f"p50 {num(p50)} ms")
        ax.axvline(p99, color="0.35", ls="--", lw=1.2, label=f"p99 {num(p99)} ms")
        bound = getattr(slo, key, None) if slo is not None else None
        if bound is not None:
            meet = float((v <= bound).mean())
            ax.axvline(bound, color="#d62728", lw=1.5, label=f"SLO {bound:g} ms ({meet:.0%} within)")
        if v[0] > 0 and v[-1] / v[0] > 50:
            _log_x(ax)
        ax.set_xlabel(f"{key[:-3].upper()} [ms]" + (" (log scale)" if ax.get_xscale() == "log" else ""))
        ax.set_ylabel("fraction of requests ≤ x")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"Request latency CDFs (completed requests only)\n{_title(r)}", fontsize=11)
    note = _overload_note(r)
    fig.tight_layout(rect=(0, 0.04, 1, 1) if note else None)
    _flag(fig, note)
    return save(fig, path)


def output_rate(r: SimResult, edges: np.ndarray) -> np.ndarray:
    """Output tokens per second in each bin between `edges`: a request emits its first token at
    first_token_s and the other output_len - 1 evenly until finish_s. O(n log n): the cumulative
    token count is piecewise linear between request events, so interpolate it at the edges."""
    q = r.requests
    first = np.asarray(q["first_token_s"], dtype=float)
    finish = np.asarray(q["finish_s"], dtype=float)
    n_out = np.asarray(q["output_len"], dtype=float)
    ok = np.isfinite(first)
    cum = np.searchsorted(np.sort(first[ok]), edges, side="right").astype(float)  # first tokens
    d = ok & np.isfinite(finish) & (finish > first) & (n_out > 1)
    if d.any():
        rate = (n_out[d] - 1) / (finish[d] - first[d])
        t = np.concatenate([first[d], finish[d]])
        dr = np.concatenate([rate, -rate])
        order = np.argsort(t, kind="stable")
        t, dr = t[order], dr[order]
        cur = np.cumsum(dr)  # rate right after each event
        integral = np.concatenate([[0.0], np.cumsum(cur[:-1] * np.diff(t))])
        cum += np.interp(edges, t, integral, left=0.0, right=integral[-1])
    return np.diff(cum) / np.diff(edges)


def timeline(r: SimResult, path: Path) -> Path:
    ts = r.timeseries
    makespan = float(r.makespan_s)
    t = np.asarray(ts.get("t_s", ()), dtype=float)
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True,
                             gridspec_kw={"height_ratios": [1.2, 1, 1]})
    scale, unit = (1.0, "s") if makespan < 600 else ((1 / 60, "min") if makespan < 36000 else (1 / 3600, "h"))

    ax = axes[0]
    nb = int(np.clip(np.sqrt(max(1, r.requests["arrival_s"].size)) * 3, 20, 200))
    edges = np.linspace(0.0, makespan if makespan > 0 else 1.0, nb + 1)
    rate = output_rate(r, edges)
    ax.stairs(rate, edges * scale, color="#1f77b4", lw=1.6, label="output tokens/s")
    if makespan > 0 and np.isfinite(rate).any():
        avg = float(np.nansum(rate * np.diff(edges)) / makespan)
        ax.axhline(avg, color="0.4", ls="--", lw=1, label=f"run average {avg:,.0f} tokens/s")
    ax.set_ylabel("output throughput\n[tokens/s]")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Throughput, KV cache and queue over time")

    ax = axes[1]
    if t.size and "kv_used_frac" in ts:
        kv = np.asarray(ts["kv_used_frac"], dtype=float) * 100
        ax.step(t * scale, kv, where="post", color="#9467bd", lw=1.5,
                label=f"KV cache used (all replicas; peak {num(float(kv.max()))}%)")
    if t.size and "busy_frac" in ts:
        ax.step(t * scale, np.asarray(ts["busy_frac"], dtype=float) * 100, where="post", color="#ff7f0e",
                lw=1.0, alpha=0.8, label=f"{_device(r)} busy (mean of replicas)")
    ax.set_ylabel("share [%]")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)

    ax = axes[2]
    # outstanding = waiting + running: not drawn, it would hide the two that explain it
    for key, label, color in (("running", "running (holding KV on a replica)", "#2ca02c"),
                              ("queue_len", "waiting in queue", "#d62728")):
        if t.size and key in ts:
            ax.step(t * scale, np.asarray(ts[key], dtype=float), where="post", lw=1.4, color=color,
                    label=label)
    ax.set_ylabel("requests\n(interval average)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"simulated time [{unit}]")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_xlim(0, (makespan if makespan > 0 else 1.0) * scale)
    fig.suptitle(_title(r), fontsize=10, y=0.995)
    note = _overload_note(r)
    fig.tight_layout(rect=(0, 0.03, 1, 1) if note else None)
    _flag(fig, note)
    return save(fig, path)


def moment_hist(r: SimResult, path: Path) -> Path:
    m = r.moments
    ms = np.asarray(m["dur_s"], dtype=float) * 1e3
    kind = np.asarray(m["kind"])
    fig, ax = plt.subplots(figsize=(9, 4.8))
    pos = ms[ms > 0]
    if pos.size == 0:
        _empty(ax, "no moments")
    else:
        lo, hi = pos.min(), pos.max()
        if hi <= lo * 1.01:
            lo, hi = lo / 1.5, hi * 1.5
        bins = np.geomspace(lo, hi, 60)
        for name, sel in (("prefill", kind != 1), ("decode", kind == 1)):
            v = ms[sel & (ms > 0)]
            if v.size:
                ax.hist(v, bins=bins, alpha=0.6, color=COLORS[name], edgecolor=COLORS[name],
                        label=f"{name} ({v.size:,} moments, median {num(float(np.median(v)))} ms)")
        _log_x(ax)
        ax.set_xlabel("moment length [ms] (log scale)")
        ax.set_ylabel("moments per bin")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9)
    ax.set_title(f"Moment lengths: prefill (any prompt tokens) vs decode-only\n{_title(r)}", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


def breakdown(r: SimResult, path: Path) -> Path:
    cats = r.category_s
    # a part without busy time (no decode moments in a static run of 1-token outputs) is left out
    parts = [p for p in ("prefill", "decode") if sum(max(0.0, float(v)) for v in cats.get(p, {}).values()) > 0]
    names: list[str] = []
    for p in parts:
        for c in cats[p]:
            if c not in names:
                names.append(c)
    totals = {p: sum(max(0.0, float(v)) for v in cats[p].values()) for p in parts}
    fig, ax = plt.subplots(figsize=(11, 2.2 + 0.7 * max(1, len(parts))))
    if not parts:
        _empty(ax, "no busy time")
        return save(fig, path)
    # tab20's pairs are two shades of one hue: take the dark shades first so neighbours differ
    cmap = plt.get_cmap("tab20")
    shade = [2 * i for i in range(10)] + [2 * i + 1 for i in range(10)]
    y = np.arange(len(parts))
    left = np.zeros(len(parts))
    for i, c in enumerate(names):
        w = np.array([max(0.0, float(cats[p].get(c, 0.0))) / totals[p] * 100 if totals[p] else 0.0
                      for p in parts])
        if not w.any():
            continue
        ax.barh(y, w, left=left, color=cmap(shade[i % 20]), edgecolor="white", lw=0.5, label=c)
        for j in range(len(parts)):
            if w[j] >= 6:
                ax.text(left[j] + w[j] / 2, y[j], f"{w[j]:.0f}%", ha="center", va="center", fontsize=8)
        left += w
    ax.set_yticks(y)
    ax.set_yticklabels([f"{p} moments\n{totals[p]:.3g} s busy" for p in parts])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the moments' time [%]")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=7, fontsize=8, frameon=False)
    ax.set_title(f"Where the time goes, by operation\n{_title(r)}", fontsize=11)
    fig.tight_layout()
    return save(fig, path)


PLOTS = {"latency_cdf.png": latency_cdf, "timeline.png": timeline, "moment_hist.png": moment_hist,
         "breakdown.png": breakdown}


def write_plots(r: SimResult, out: Path) -> list[Path]:
    """All plots into folder `out`; returns their paths."""
    return [fn(r, Path(out) / name) for name, fn in PLOTS.items()]
