"""The outputs of a plan: plan.csv, configs.csv, runs.csv, plan.png, the terminal table and
the JSON; and the `momentsim plan` command."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simulator.reports.tables import aligned, write_rows
from simulator.studies.plan import PlanResult, _f, _get, run_plan
from simulator.studies.plan_schema import load_plan


# -- outputs ---------------------------------------------------------------------------------------
def _config_rows(res: PlanResult) -> list[dict[str, Any]]:
    rows = []
    for cr in res.candidates:
        for c in cr.configs:
            m = c.check.metrics if c.check else {}
            rows.append({
                "hardware": cr.name, "tp": c.tp, "pp": c.pp, "max_batch_size": c.max_batch_size,
                "scheduler": c.scheduler, "status": c.status, "reason": c.reason, "replicas": c.replicas,
                "min_replicas_bound": c.min_replicas, "decode_tok_s_bound": c.decode_tok_s,
                "kv_tokens": c.kv_tokens, "lb_cost_per_hour": c.lb_cost_per_hour,
                "cost_per_hour": cr.price_per_hour * c.tp * c.pp * c.replicas if c.replicas else None,
                "p99_ttft_ms": _get(m, "ttft_ms", "p99"), "p99_tpot_ms": _get(m, "tpot_ms", "p99"),
                "goodput": _get(m, "goodput", "fraction"), "output_tokens_per_s": m.get("output_tokens_per_s"),
            })
    return rows


def _run_rows(res: PlanResult) -> list[dict[str, Any]]:
    rows = []
    for cr in res.candidates:
        for r in cr.runs:
            m = r.metrics
            rows.append({"hardware": cr.name, "config": r.config, "replicas": r.replicas, "rate": r.rate,
                         "ok": r.ok, **{f"ratio_{k}": v for k, v in r.ratios.items()},
                         "p99_ttft_ms": _get(m, "ttft_ms", "p99"), "p99_tpot_ms": _get(m, "tpot_ms", "p99"),
                         "goodput": _get(m, "goodput", "fraction"),
                         "output_tokens_per_s": m.get("output_tokens_per_s")})
    return rows


def write_outputs(res: PlanResult, out: Path) -> dict[str, str]:
    """plan.csv (one row per candidate), configs.csv, runs.csv and plan.png."""
    out.mkdir(parents=True, exist_ok=True)
    best = res.best
    rows = [{**c.summary(), "cheapest": c is best} for c in res.candidates]
    write_rows(rows, out / "plan.csv")
    write_rows(_config_rows(res), out / "configs.csv")
    runs = _run_rows(res)
    if runs:
        write_rows(runs, out / "runs.csv")
    files = {"plan": str(out / "plan.csv"), "configs": str(out / "configs.csv")}
    if runs:
        files["runs"] = str(out / "runs.csv")
    files["plot"] = plot_plan(res, out / "plan.png")
    return files


def plot_plan(res: PlanResult, path: Path) -> str:
    """Each part's USD per million output tokens and highest sustainable rate, the cheapest in red."""
    from simulator.reports.plots import plt, save  # matplotlib only when plotting (Agg)

    cands = res.candidates
    names = [c.name for c in cands]
    best = res.best
    colors = ["tab:red" if c is best else "tab:blue" for c in cands]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    costs = [c.cost_per_m_output_tokens or 0.0 for c in cands]
    axes[0].bar(names, costs, color=colors)
    for i, c in enumerate(cands):
        label = (f"{c.best.label}\nx{c.best.replicas}" if c.best else f"none\n({c.binding})")
        axes[0].annotate(label, (i, costs[i]), ha="center", va="bottom", fontsize=7)
    axes[0].set_ylim(0, max(costs + [1e-9]) * 1.25)  # room for the labels
    axes[0].set_ylabel("USD per million output tokens")
    axes[0].set_title(f"{res.plan.name}: cheapest configuration per part at {res.plan.rate:g} req/s")
    rates = [c.max_rate or 0.0 for c in cands]
    axes[1].bar(names, rates, color=colors)
    axes[1].set_ylim(0, max(rates + [res.plan.rate]) * 1.15)
    axes[1].axhline(res.plan.rate, color="k", ls="--", lw=1, label="target rate")
    for i, c in enumerate(cands):
        if c.binding:
            axes[1].annotate(c.binding, (i, rates[i]), ha="center", va="bottom", fontsize=7)
    axes[1].set_ylabel("highest sustainable rate (req/s)")
    axes[1].set_title("capacity of that configuration (binding constraint)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    return str(path)


def format_table(res: PlanResult) -> str:
    p, s = res.plan, res.plan.slo
    bounds = [f"p99 TTFT <= {s.p99_ttft_ms:g} ms" if s.p99_ttft_ms else "",
              f"p99 TPOT <= {s.p99_tpot_ms:g} ms" if s.p99_tpot_ms else "",
              f"goodput >= {s.goodput:.0%}" if s.goodput else ""]
    lines = [f"plan {p.name}: {p.model} at {p.rate:g} req/s; SLO {', '.join(b for b in bounds if b)}"]
    head = ["hardware", "configuration", "devices", "$/hour", "$/M tok", "p99 TTFT", "p99 TPOT", "goodput",
            "max rate", "binding"]
    body = []
    order = sorted(res.candidates, key=lambda c: (c.cost_per_hour is None, c.cost_per_hour or 0.0))
    for c in order:
        d = c.summary()
        cfg = f"{c.best.label} x{c.best.replicas}" if c.best else "none meets the SLO"
        body.append([c.name + (" *" if c is res.best else ""), cfg, _f(d["devices"], "d"), _f(d["cost_per_hour"], ".2f"),
                     _f(d["cost_per_m_output_tokens"], ".3f"), _f(d["p99_ttft_ms"], ".0f"), _f(d["p99_tpot_ms"], ".1f"),
                     _f(d["goodput"], ".1%"), _f(d["max_rate"], ".1f"), d["binding"] or "-"])
    lines += aligned(head, body)
    b = res.best
    if b and b.best:
        lines.append(f"cheapest: {b.name} {b.best.label} x {b.best.replicas} replicas = {b.devices} devices, "
                     f"${b.cost_per_hour:.2f}/hour, ${_f(b.cost_per_m_output_tokens, '.3f')} per million output tokens")
    else:
        lines.append("no candidate meets the SLO at the target rate")
    lines.append(f"{res.simulations} simulations in {res.wall_s:.1f} s")
    return "\n".join(lines)


def to_json(res: PlanResult, files: dict[str, str]) -> dict[str, Any]:
    b = res.best
    return {
        "plan": res.plan.name, "model": res.plan.model, "target_rate": res.plan.rate,
        "slo": res.plan.slo.model_dump(exclude_none=True),
        "best": {**b.summary()} if b else None,
        "candidates": [c.summary() for c in res.candidates],
        "configs": _config_rows(res), "simulations": res.simulations, "wall_s": res.wall_s, "files": files,
    }


def cmd_plan(args: argparse.Namespace) -> int:
    path = Path(args.plan)
    plan = load_plan(path)
    res = run_plan(plan, path.parent)
    out = Path(args.out) if args.out else path.parent / "out" / path.stem
    files = write_outputs(res, out)
    if args.json:
        print(json.dumps(to_json(res, files), default=_jsonable))
    else:
        print(format_table(res))
        print(f"outputs: {out}/ (plan.csv, configs.csv, runs.csv, plan.png)")
    return 0 if res.best else 1


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)
