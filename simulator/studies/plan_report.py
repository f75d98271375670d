"""The outputs of a plan: plan.csv, configs.csv, runs.csv, plan.png, the terminal table and
the JSON; and the `momentsim plan` command."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simulator.reports.metrics import clean
from simulator.reports.outdir import out_dir, write_error
from simulator.reports.tables import aligned, write_rows
from simulator.studies.plan import ConfigStatus, PlanResult, _f, _get, evaluate, run_plan
from simulator.studies.plan_schema import load_plan
from simulator.studies.sweep_report import flatten


# -- outputs ---------------------------------------------------------------------------------------
def _used(ratios: dict[str, float]) -> dict[str, float | None]:
    return {f"limit_used.{k}": (v if math.isfinite(v) else None) for k, v in ratios.items()}


def _config_rows(res: PlanResult) -> list[dict[str, Any]]:
    """Every configuration of every part: what became of it and how much of each limit its last
    simulated point used (the answer when ok; the most replicas tried when infeasible)."""
    rows = []
    for cr in res.candidates:
        for c in cr.configs:
            ck = c.check
            m = ck.metrics if ck else {}
            rows.append({
                "hardware": cr.name, "tp": c.tp, "pp": c.pp, "max_batch_size": c.max_batch_size,
                "scheduler": c.scheduler, "pd_ratio": f"{c.pd[0]}:{c.pd[1]}" if c.pd else None,
                "status": c.status.value, "reason": c.reason, "replicas": c.replicas,
                "min_replicas_bound": c.min_replicas, "decode_tok_s_bound": c.decode_tok_s,
                "kv_tokens": c.kv_tokens, "lb_cost_per_hour": c.lb_cost_per_hour,
                "cost_per_hour": cr.cost_per_hour_of(c, ck) if c.replicas and ck else None,
                "checked_replicas": ck.replicas if ck else None, "seeds": len(ck.seeds) if ck else 0,
                "p99_ttft_ms": _get(m, "ttft_ms", "p99"), "p99_tpot_ms": _get(m, "tpot_ms", "p99"),
                "goodput": _get(m, "goodput", "fraction"), "output_tokens_per_s": m.get("output_tokens_per_s"),
                "nearest_limit": ck.worst if ck else None, **_used(ck.ratios if ck else {}),
            })
    return rows


def _run_rows(res: PlanResult) -> list[dict[str, Any]]:
    """Every simulation: one row per (configuration, replicas, rate, seed)."""
    rows = []
    slo = res.plan.slo
    for cr in res.candidates:
        for r in cr.runs:
            for seed, m, ok in zip(r.seeds, r.by_seed, r.seed_ok, strict=True):
                rows.append({"hardware": cr.name, "config": r.config, "replicas": r.replicas, "rate": r.rate,
                             "seed": seed, "ok": ok, **_used(evaluate(m, slo)[1]),
                             "p99_ttft_ms": _get(m, "ttft_ms", "p99"), "p99_tpot_ms": _get(m, "tpot_ms", "p99"),
                             "goodput": _get(m, "goodput", "fraction"), "overloaded": m.get("overloaded"),
                             "output_tokens_per_s": m.get("output_tokens_per_s")})
    return rows


def _plan_rows(res: PlanResult) -> list[dict[str, Any]]:
    best = res.best
    rows = []
    for c in res.candidates:
        s = c.summary()
        s["seeds"] = " ".join(map(str, s["seeds"]))
        rows.append({**flatten(s), "cheapest": c is best})
    return rows


def write_outputs(res: PlanResult, out: Path) -> dict[str, str]:
    """plan.csv (one row per candidate), configs.csv, runs.csv, plan.png and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    write_rows(_plan_rows(res), out / "plan.csv")
    write_rows(_config_rows(res), out / "configs.csv")
    runs = _run_rows(res)
    if runs:
        write_rows(runs, out / "runs.csv")
    files = {"plan": str(out / "plan.csv"), "configs": str(out / "configs.csv")}
    if runs:
        files["runs"] = str(out / "runs.csv")
    files["plot"] = plot_plan(res, out / "plan.png")
    files["report"] = str(html_report(res, Path(files["plot"]), out / "report.html"))
    return files


def plot_plan(res: PlanResult, path: Path) -> str:
    """Per part: USD per million output tokens of its answer (the cheapest in red); the share of
    each SLO limit that answer uses at the target rate (bars: the worst seed, whiskers: the
    seeds' range; the dashed line is the limit less the headroom); its highest sustainable rate
    with the constraint that breaks first."""
    from simulator.reports.plots import plt, save  # matplotlib only when plotting (Agg)

    cands = res.candidates
    names = [c.name for c in cands]
    best = res.best
    colors = ["tab:red" if c is best else "tab:blue" for c in cands]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    costs = [c.cost_per_m_output_tokens or 0.0 for c in cands]
    axes[0].bar(names, costs, color=colors)
    for i, c in enumerate(cands):
        label = (f"{c.best.label}\nx{c.best.replicas}" if c.best else f"none\n({c.binding})")
        axes[0].annotate(label, (i, costs[i]), ha="center", va="bottom", fontsize=7)
    axes[0].set_ylim(0, max(costs + [1e-9]) * 1.25)  # room for the labels
    axes[0].set_ylabel("USD per million output tokens")
    axes[0].set_title(f"{res.plan.name}: cheapest configuration per part at {res.plan.rate:g} req/s", fontsize=10)

    ax = axes[1]
    kinds = limits(res)
    width = 0.8 / max(len(kinds), 1)
    for j, k in enumerate(kinds):
        xs, worst, lo, hi = [], [], [], []
        for i, c in enumerate(cands):
            ck = c.best.check if c.best else None
            v = [r[k] for r in (ck.seed_ratios if ck else []) if k in r and math.isfinite(r[k])]
            if v:
                xs.append(i + (j - (len(kinds) - 1) / 2) * width)
                worst.append(max(v))
                lo.append(max(v) - min(v))
                hi.append(0.0)
        if xs:
            ax.bar(xs, [w * 100 for w in worst], width, yerr=[[x * 100 for x in lo], hi], capsize=3,
                   label=f"{k} ({len(ck.seeds) if ck else 0} seeds)" if j == 0 else k)
    ax.axhline((1 - res.plan.slo.headroom) * 100, color="#d62728", ls="--", lw=1,
               label=f"limit less {res.plan.slo.headroom:.0%} headroom")
    ax.set_xticks(range(len(cands)), names)
    ax.set_ylabel("share of the limit used at the target [%]")
    ax.set_title("how close each answer is to its limits (seeds' range)", fontsize=10)
    ax.legend(fontsize=7)

    rates = [c.max_rate or 0.0 for c in cands]
    axes[2].bar(names, rates, color=colors)
    axes[2].set_ylim(0, max(rates + [res.plan.rate]) * 1.15)
    axes[2].axhline(res.plan.rate, color="k", ls="--", lw=1, label="target rate")
    for i, c in enumerate(cands):
        if c.binding:
            axes[2].annotate(c.binding, (i, rates[i]), ha="center", va="bottom", fontsize=7)
    axes[2].set_ylabel("highest sustainable rate (req/s)")
    axes[2].set_title("capacity of that configuration (what breaks first)", fontsize=10)
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    return str(path)


def _range(spread: dict[str, Any], key: str, spec: str) -> str:
    """The worst seed's value and the seeds' range: '285 (270-301)'."""
    s = spread.get(key) or {}
    if s.get("min") is None:
        return "-"
    worst = s["min"] if key == "goodput" else s["max"]
    if s["min"] == s["max"]:
        return _f(worst, spec)
    return f"{_f(worst, spec)} ({_f(s['min'], spec)}-{_f(s['max'], spec)})"


def _pct(v: float | None) -> str:
    """A share of a limit: '72%', or 'missed' past any measure (no completion, overload)."""
    return "-" if v is None else f"{v:.0%}" if math.isfinite(v) else "missed"


def _share(ratios: dict[str, float], name: str | None) -> str:
    return f"{name} {_pct(ratios.get(name))}" if name else "-"


SLO_FIELD = {"TTFT": "p99_ttft_ms", "TPOT": "p99_tpot_ms", "goodput": "goodput"}  # a limit's PlanSlo field


def limits(res: PlanResult) -> list[str]:
    """The SLO's limits that are set, by the names the ratios use."""
    return [k for k, f in SLO_FIELD.items() if getattr(res.plan.slo, f) is not None]


def alternatives(res: PlanResult) -> list[list[str]]:
    """Every point the search settled on or ruled out, with its cost against the answer's and the
    share of each limit its worst seed used: the answer, then what also meets the SLO (cheapest
    first), then the misses (nearest to meeting it first). A configuration shows the fewest
    replicas that met the SLO and the count just below; one that never met it, the last tried."""
    best = res.best
    base = best.cost_per_hour if best else None
    names = limits(res)
    limit = 1 - res.plan.slo.headroom
    items = []
    for cr in res.candidates:
        for c in cr.configs:
            for ck in (c.check, c.fewer):
                if ck is None:
                    continue
                cost = cr.cost_per_hour_of(c, ck)
                if best is not None and ck is c.check and c is cr.best and cr is best:
                    verdict, group = "the answer", 0
                elif ck.ok:
                    verdict, group = "meets the SLO", 1
                elif ck is c.fewer:
                    verdict, group = f"misses: one replica fewer than x{c.replicas}", 2
                elif c.status == ConfigStatus.PRUNED_COST:
                    verdict, group = "misses: more replicas would cost more than this part's answer", 2
                else:
                    verdict, group = "misses at the most replicas allowed", 2
                worst = max(ck.ratios.values(), default=0.0)
                extra = [k for k, v in ck.ratios.items() if k not in names and v > limit]
                items.append(((group, cost if group < 2 else worst, cost), [
                    f"{cr.name} {c.label} x{ck.replicas}", f"{cost:.2f}", f"{cost / base - 1:+.0%}" if base else "-",
                    *(_pct(ck.ratios.get(k)) for k in names), ", ".join(extra) or "-", str(len(ck.seeds)), verdict]))
    items.sort(key=lambda x: x[0])
    return [row for _, row in items]



def alternatives_head(res: PlanResult) -> list[str]:
    return ["configuration", "$/hour", "vs answer", *(f"{k} used" for k in limits(res)), "also", "seeds", "verdict"]


def headline(res: PlanResult) -> str:
    p, s = res.plan, res.plan.slo
    bounds = [f"p99 TTFT <= {s.p99_ttft_ms:g} ms" if s.p99_ttft_ms else "",
              f"p99 TPOT <= {s.p99_tpot_ms:g} ms" if s.p99_tpot_ms else "",
              f"goodput >= {s.goodput:.0%}" if s.goodput else ""]
    return (f"plan {p.name}: {p.model} at {p.rate:g} req/s; SLO {', '.join(b for b in bounds if b)}, "
            f"each kept {s.headroom:.0%} below its limit under each of {p.seeds} seeds")


def by_cost(res: PlanResult) -> list[Any]:
    return sorted(res.candidates, key=lambda c: (c.cost_per_hour is None, c.cost_per_hour or 0.0))


def conclusion(res: PlanResult) -> list[str]:
    """The answer in words: what it costs, which limit binds, what one replica fewer misses."""
    b, rate = res.best, res.plan.rate
    if not (b and b.best):
        return ["no candidate meets the SLO at the target rate"]
    d = b.summary()
    lines = [f"cheapest: {b.name} {b.best.label} x {b.best.replicas} replicas = {b.devices} devices, "
             f"${b.cost_per_hour:.2f}/hour, ${_f(b.cost_per_m_output_tokens, '.3f')} per million output tokens",
             f"binding: {d['nearest_limit']} at {rate:g} req/s uses {_pct(d['limit_used'].get(d['nearest_limit']))}"
             f" of its limit (worst of seeds {', '.join(map(str, d['seeds']))}); above {_f(d['max_rate'], '.1f')} "
             f"req/s {d['binding']} breaks first"]
    if d["electricity_per_hour"] is not None:
        lines.append(f"electricity: ${d['electricity_per_hour']:.2f}/hour of it ({_f(d['avg_power_w'], ',.0f')} W "
                     f"average at ${res.plan.electricity_usd_per_kwh:g}/kWh; "
                     f"{_f(d['energy_j_per_token'], '.3g')} J per output token)")
    fewer = d["one_replica_fewer"]
    if fewer:
        lines.append(f"with {fewer['replicas']} replica(s) it misses on {fewer['fails_on']} "
                     f"({_pct(fewer['limit_used'].get(fewer['fails_on']))} of its limit)")
    return lines


def format_table(res: PlanResult, alternatives_shown: int = 12) -> str:
    s = res.plan.slo
    head = ["hardware", "configuration", "devices", "$/hour", "$/M tok", "p99 TTFT (seeds)", "p99 TPOT (seeds)",
            "goodput", "nearest limit", "max rate", "binding"]
    body = []
    for c in by_cost(res):
        d = c.summary()
        cfg = f"{c.best.label} x{c.best.replicas}" if c.best else "none meets the SLO"
        body.append([c.name + (" *" if c is res.best else ""), cfg, _f(d["devices"], "d"), _f(d["cost_per_hour"], ".2f"),
                     _f(d["cost_per_m_output_tokens"], ".3f"), _range(d["spread"], "p99_ttft_ms", ".0f"),
                     _range(d["spread"], "p99_tpot_ms", ".1f"), _range(d["spread"], "goodput", ".1%"),
                     _share(d["limit_used"], d["nearest_limit"]), _f(d["max_rate"], ".1f"), d["binding"] or "-"])
    lines = [headline(res), *aligned(head, body), *conclusion(res)]
    alts = alternatives(res)
    if alts:
        lines.append(f"alternatives (share of each limit used by the worst seed; above {1 - s.headroom:.0%} misses):")
        lines += ["  " + line for line in aligned(alternatives_head(res), alts[:alternatives_shown])]
        if len(alts) > alternatives_shown:
            lines.append(f"  ... {len(alts) - alternatives_shown} more in configs.csv and runs.csv")
    lines.append(f"{res.simulations} simulations in {res.wall_s:.1f} s")
    return "\n".join(lines)


def html_report(res: PlanResult, plot: Path, path: Path) -> Path:
    """report.html: the answer per part (p99s: the worst seed, and the seeds' range), the answer
    in words, every alternative's share of each limit, the plot, and every configuration."""
    from simulator.reports import html

    rows = []
    for c in by_cost(res):
        d, k = c.summary(), c.name
        rows.append([c.name + (" (cheapest)" if c is res.best else ""),
                     f"{c.best.label} x{c.best.replicas}" if c.best else "none meets the SLO",
                     html.cell(d["devices"], f"{k}.devices"), html.cell(d["cost_per_hour"], f"{k}.cost_per_hour", ".2f"),
                     html.cell(d["cost_per_m_output_tokens"], f"{k}.cost_per_m_output_tokens", ".3f"),
                     html.cell(d["p99_ttft_ms"], f"{k}.p99_ttft_ms", ".1f"), _range(d["spread"], "p99_ttft_ms", ".1f"),
                     html.cell(d["p99_tpot_ms"], f"{k}.p99_tpot_ms", ".2f"), _range(d["spread"], "p99_tpot_ms", ".2f"),
                     _range(d["spread"], "goodput", ".1%"), _share(d["limit_used"], d["nearest_limit"]),
                     html.cell(d["max_rate"], f"{k}.max_rate", ".2f"), d["binding"] or "-"])
    configs = [[r["hardware"], f"tp{r['tp']} pp{r['pp']} bs{r['max_batch_size']} {r['scheduler']}", r["status"],
                r["replicas"], r["reason"]] for r in _config_rows(res)]
    blocks = [
        html.p(headline(res)), html.p(res.plan.description, "note") if res.plan.description else "",
        *(html.p(line) for line in conclusion(res)),
        html.h2("The answer per part"),
        html.table(["hardware", "configuration", "devices", "$/hour", "$/M output tokens", "p99 TTFT ms",
                    "(seeds)", "p99 TPOT ms", "(seeds)", "goodput (seeds)", "nearest limit", "max rate req/s",
                    "breaks first"], rows, caption="p99s and goodput: the worst of the seeds, with their range"),
        html.h2("Plot"), html.image(plot, "plan"),
        html.h2("Alternatives"),
        html.table(alternatives_head(res), alternatives(res),
                   caption=f"share of each limit used by the worst seed; above {1 - res.plan.slo.headroom:.0%} misses"),
        html.h2("Every configuration"), html.table(["hardware", "configuration", "status", "replicas", "why"], configs),
        html.p(f"{res.simulations} simulations in {res.wall_s:.1f} s", "note"),
    ]
    return html.write_page(path, f"plan {res.plan.name}", blocks)


def to_json(res: PlanResult, files: dict[str, str]) -> dict[str, Any]:
    b = res.best
    return clean({
        "plan": res.plan.name, "model": res.plan.model, "target_rate": res.plan.rate,
        "slo": res.plan.slo.model_dump(exclude_none=True), "seeds": res.plan.seeds,
        "best": {**b.summary()} if b else None,
        "candidates": [c.summary() for c in res.candidates],
        "configs": _config_rows(res), "alternatives": {"head": alternatives_head(res), "rows": alternatives(res)},
        "simulations": res.simulations, "wall_s": res.wall_s, "files": files,
    })


def cmd_plan(args: argparse.Namespace) -> int:
    path = Path(args.plan)
    plan = load_plan(path, args.rate, args.slo)
    with out_dir(Path(args.out) if args.out else path.parent / "out" / path.stem) as out:  # checked first
        res = run_plan(plan, path.parent)
        try:
            files = write_outputs(res, out)
        except OSError as e:
            raise write_error(e, out) from None
    if args.json:
        print(json.dumps(to_json(res, files), default=_jsonable))
    else:
        print(format_table(res))
        print(f"outputs: {out}/ (report.html, plan.csv, configs.csv, runs.csv, plan.png)")
    return 0 if res.best else 1


def _jsonable(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)
