"""`momentsim run SCENARIO.yaml`: simulate one scenario, summarise it, write its outputs.

Bad input must end as one InputError line before any simulation starts, so the model, the
hardware, the parallelism and the memory footprint are all resolved and checked first.
`run_scenario` is the one path from a Scenario to its metrics; sweeps call it too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from simulator.reports.metrics import KIND_NAMES, num, per_request, summarize
from simulator.reports.outdir import out_dir, write_error
from simulator.reports.progress import Progress
from simulator.reports.tables import Lazy, labels, write_columns
from simulator.serving.engine import SimResult, check_scenario, simulate
from simulator.serving.scenario import Scenario, load_scenario

MAX_CSV_ROWS = 1_000_000


# -- outputs -------------------------------------------------------------------------------------
def write_outputs(r: SimResult, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """report.html, metrics.json, requests.csv, moments.csv, timeseries.csv, the plots and trace.json."""
    try:
        return _write_outputs(r, summary, out)
    except OSError as e:
        raise write_error(e, out) from None


def _write_outputs(r: SimResult, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    from simulator.reports.html import run_report
    from simulator.reports.plots import write_plots  # matplotlib loads only when plots are wanted
    from simulator.reports.trace import write_trace

    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    q = r.requests
    lat = per_request(r)
    n_req = len(q["arrival_s"])
    write_columns(out / "requests.csv", [
        ("id", Lazy(n_req, np.arange), "%d"),
        ("arrival_s", q["arrival_s"], "%.6f"),
        ("prompt_len", q["prompt_len"], "%d"),
        ("output_len", q["output_len"], "%d"),
        ("first_token_s", q["first_token_s"], "%.6f"),
        ("finish_s", q["finish_s"], "%.6f"),
        ("ttft_ms", lat["ttft_ms"], "%.4f"),
        ("tpot_ms", lat["tpot_ms"], "%.4f"),
        ("e2e_ms", lat["e2e_ms"], "%.4f"),
        ("replica", q["replica"], "%d"),
        ("engine", q.get("engine", np.broadcast_to(0, n_req)), "%d"),
        ("status", labels(("completed", "rejected"), np.asarray(q["status"])), "%s"),
        ("preemptions", q["preemptions"], "%d"),
        *((("decode_replica", q["decode_replica"], "%d"), ("kv_transfer_ms", q["kv_transfer_s"] * 1e3, "%.4f"))
          if "decode_replica" in q else ()),
        *((("class", np.asarray(r.class_names)[q["class"]], "%s"), ("priority", q["priority"], "%d"))
          if "class" in q else ()),
    ])
    m = r.moments
    n_mom = len(m["start_s"])
    rows = write_columns(out / "moments.csv", [
        ("start_s", m["start_s"], "%.6f"),
        ("dur_ms", Lazy(n_mom, lambda i, j: np.asarray(m["dur_s"][i:j], dtype=float) * 1e3), "%.4f"),
        ("replica", m["replica"], "%d"),
        ("engine", m.get("engine", np.broadcast_to(0, n_mom)), "%d"),
        ("kind", labels(KIND_NAMES, np.asarray(m["kind"])), "%s"),
        ("tokens", m["tokens"], "%d"),
        ("batch", m["batch"], "%d"),
        ("kv_blocks_used", m["kv_blocks_used"], "%d"),
        *((("pool", np.asarray([p["role"] for p in r.pools])[m["pool"]], "%s"),) if r.pools else ()),
    ], limit=MAX_CSV_ROWS)
    if rows < n_mom:
        notes.append(f"moments.csv holds the first {rows:,} of {n_mom:,} moments (capped); "
                     "metrics.json covers all of them")
    ts = r.timeseries
    keys = ["t_s"] + [k for k in ts if k != "t_s"]
    write_columns(out / "timeseries.csv", [(k, ts[k], "%.6g") for k in keys if k in ts])
    plots = write_plots(r, out)
    tr = write_trace(r, out / "trace.json")
    if tr.get("truncated"):
        notes.append(tr["note"])
    run_report(summary, plots, out / "report.html")
    files = ["report.html", "metrics.json", "requests.csv", "moments.csv", "timeseries.csv", *(p.name for p in plots),
             "trace.json"]
    outputs = {"dir": str(out), "files": files, "moments_csv_rows": rows, "notes": notes}
    full = {**summary, "outputs": outputs}
    (out / "metrics.json").write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    return outputs


def run_scenario(scenario: Scenario, out: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Simulate, summarise and (with `out`) write every output. The one path sweeps share."""
    bar = Progress(enabled=progress) if progress else None
    try:
        result = simulate(scenario, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    summary = summarize(result)
    if out is not None:
        summary = {**summary, "outputs": write_outputs(result, summary, Path(out))}
    return summary


# -- the command ---------------------------------------------------------------------------------
def _fmt(x: Any, spec: str | None = None) -> str:
    if x is None:
        return "n/a"
    return format(x, spec) if spec else num(x)


def _lat_line(name: str, d: dict[str, Any]) -> str:
    return (f"{name:<16}mean {_fmt(d['mean']):>8}  p50 {_fmt(d['p50']):>8}  p90 {_fmt(d['p90']):>8}  "
            f"p99 {_fmt(d['p99']):>8}")


def _ttft_split_line(d: dict[str, Any]) -> str:
    """TTFT's parts at their means (the means add up to the TTFT's mean)."""
    return (f"{'  of which':<16}queue {_fmt(d['queue']['mean'])}, prefill {_fmt(d['prefill']['mean'])}, "
            f"front end {_fmt(d['overheads']['mean'])} ms (means)")


def format_summary(s: dict[str, Any]) -> str:
    """A few aligned lines for a person; --json is for programs."""
    c, req = s.get("config", {}), s["requests"]
    stack = f"{c['stack']['name']}, " if isinstance(c.get("stack"), dict) else ""
    head = (f"{c.get('model', '?')} on {c.get('hardware', '?')} ({stack}tp={c.get('tp', '?')}, pp={c.get('pp', '?')}, "
            f"replicas={c.get('replicas', '?')}, {c.get('scheduler', '?')})")
    if s.get("disaggregated"):
        pools = s["disaggregated"]["pools"]
        head = (f"{c.get('model', '?')} disaggregated: " + " + ".join(
            f"{p['replicas']} {p['role']} x {p['hardware']} tp={p['tp']}" for p in pools))
    flags = (["OVERLOADED"] if s.get("overloaded") else []) + (["REQUESTS REJECTED"] if req["rejected"] else [])
    if flags:
        head += ": " + ", ".join(flags)
    rej = ""
    if req["rejected"]:
        rej = " (" + ", ".join(f"{k}: {v}" for k, v in req["reject_reasons"].items()) + ")"
    mk = s["moments_by_kind"]
    lines = [
        head,
        *(f"{'warning':<16}{w}" for w in s.get("warnings", ())),
        f"{'requests':<16}{req['completed']} completed of {req['arrived']} arrived, {req['rejected']} rejected{rej}",
        f"{'makespan':<16}{_fmt(s['makespan_s'], '.4g')} s",
        f"{'throughput':<16}{_fmt(s['output_tokens_per_s'], ',.1f')} output tokens/s, "
        f"{_fmt(s['requests_per_s'])} requests/s",
        f"{'latency of':<16}the {req['completed']:,} completed requests only"
        + (" (the queue grew: these percentiles grow with the run's length)" if s.get("overloaded") else ""),
        _lat_line("TTFT ms", s["ttft_ms"]),
        *([_ttft_split_line(s["ttft_split_ms"])] if s.get("ttft_split_ms") else []),
        _lat_line("TPOT ms", s["tpot_ms"]),
        *([_lat_line("ITL ms", s["itl_ms"])] if s.get("itl_ms", {}).get("mean") is not None else []),
        _lat_line("E2E ms", s["e2e_ms"]),
        f"{'moments':<16}{s['moment_ms']['count']:,}: "
        + ", ".join(f"{k} {mk[k]['count']:,}" + (f" (p50 {_fmt(mk[k]['p50'])} ms)" if mk[k]["count"] else "")
                    for k in ("prefill", "decode")),
        f"{'utilisation':<16}MFU {_fmt(s['mfu'], '.1%')}  MBU {_fmt(s['mbu'], '.1%')}  "
        f"busy {_fmt(s['gpu_busy_frac'], '.1%')}  KV peak {_fmt(s['kv']['peak_frac'], '.1%')}",
    ]
    en = s.get("energy") or {}
    if en.get("total_j") is not None:
        lines.append(f"{'energy':<16}{_fmt(en['j_per_output_token'], '.3g')} J per output token, "
                     f"{_fmt(en['kwh'], '.3g')} kWh; a replica averages {_fmt(en['avg_power_w_per_replica'])} W, "
                     f"peak {_fmt(en['peak_power_w_per_replica'])} W (idle {_fmt(en['idle_power_w_per_replica'])}, "
                     f"TDP {_fmt(en['tdp_w_per_replica'])})")
    pre, q = s["preemptions"], s["queue"]
    if pre["total"] or (q["max_len"] or 0) > 0:
        lines.append(f"{'queue':<16}mean {_fmt(q['mean_len'])} waiting, max {_fmt(q['max_len'])}; "
                     + (f"{pre['total']:,} preemptions of {pre['requests']:,} requests, "
                        f"{pre['recomputed_tokens']:,} tokens computed again" if pre["total"] else "no preemptions"))
    pc = s.get("prefix_cache") or {}
    if pc.get("hit_tokens"):
        lines.append(f"{'prefix cache':<16}{_fmt(pc['hit_rate'], '.1%')} of {pc['prompt_tokens']:,} prompt tokens "
                     "found cached")
    g = s["goodput"]
    if g["slo"]:
        lines.append(f"{'goodput':<16}{_fmt(g['requests_per_s'])} requests/s within SLO "
                     f"({_fmt(g['fraction'], '.1%')} of requests)")
    if s.get("disaggregated"):
        d = s["disaggregated"]
        for p in d["pools"]:
            lines.append(f"{p['role'] + ' pool':<16}{p['replicas']} x {p['hardware']} tp={p['tp']}"
                         + (f" pp={p['pp']}" if p["pp"] > 1 else "") + f" ({p['scheduler']}): busy "
                         f"{_fmt(p['gpu_busy_frac'], '.1%')}, MFU {_fmt(p['mfu'], '.1%')}, KV peak "
                         f"{_fmt(p['kv_peak_frac'], '.1%')}")
        t = d["kv_transfer_ms"]
        lines.append(f"{'KV transfer ms':<16}mean {_fmt(t['mean'])}  p50 {_fmt(t['p50'])}  p99 {_fmt(t['p99'])} "
                     f"({d['transferred']:,} prompts moved to the decode pool)")
    if s.get("kv_offload"):
        ko = s["kv_offload"]
        lines.append(f"{'KV offload':<16}{ko['cpu_gb']:g} GB CPU tier: {_fmt(ko['prefix_hit_rate'], '.1%')} of "
                     f"{ko['prefix_lookups']:,} prefix lookups hit ({_fmt(ko['host_hit_rate'], '.1%')} from CPU "
                     f"memory), {ko['copied_in_blocks']:,} blocks copied in, "
                     f"{ko['swapped_out_blocks']:,} swapped out ({ko['swap_fallbacks']:,} recomputed for want of room), "
                     f"{_fmt(ko['transfer_s'], '.3g')} s of transfers")
    for name, c in (s.get("classes") or {}).items():
        g = c["goodput"]
        lines.append(f"{'class':<16}{name}: {c['completed']:,} of {c['requests']:,} (priority {c['priority']}), "
                     f"TTFT p99 {_fmt(c['ttft_ms']['p99'])} ms, TPOT p99 {_fmt(c['tpot_ms']['p99'])} ms"
                     + (f", {_fmt(g['fraction'], '.1%')} within its SLO" if g["slo"] else ""))
    top = sorted(s["breakdown_share"].items(), key=lambda kv: -kv[1])[:4]
    if top:
        lines.append(f"{'time goes to':<16}" + ", ".join(f"{k} {v:.0%}" for k, v in top))
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    where = str(args.scenario)
    sc = load_scenario(args.scenario, getattr(args, "set", None) or ())
    check_scenario(sc, where)
    show = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    with out_dir(Path(args.out) if getattr(args, "out", None) else None) as out:
        summary = run_scenario(sc, out=out, progress=show)
    if args.json:
        print(json.dumps(summary))
    if not summary["requests"]["completed"]:  # nothing to report: say why, on one line
        print(f"momentsim: {where}: {summary['warnings'][0]}", file=sys.stderr)
        return 1
    if not args.json:
        print(format_summary(summary))
        if out is not None:
            print(f"{'outputs':<16}{out}/ ({', '.join(summary['outputs']['files'])})")
            for note in summary["outputs"]["notes"]:
                print(f"{'note':<16}{note}")
    return 0
