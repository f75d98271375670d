"""The tables and plots of a sweep: results.csv (and Parquet), the terminal table,
latency_throughput.png and cost_latency.png."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hwmodels.load import load_hardware
from simulator.moment.model import load_model
from simulator.reports.tables import aligned, write_rows
from simulator.serving.scenario import Scenario, pool_serving
from simulator.studies.pareto import pareto_front
from simulator.studies.sweep_schema import MEASURED, Point, Status, Sweep, SweepResult

# swept or fixed inputs that get a short column name in results.csv
SHORT = {
    "model": "model", "hardware": "hardware", "serving.tp": "tp", "serving.pp": "pp",
    "serving.replicas": "replicas", "serving.scheduler": "scheduler",
    "serving.max_batch_size": "max_batch_size", "workload.arrival.rate": "rate", "seed": "seed",
}



# -- tables ----------------------------------------------------------------------------------------
def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as dotted columns (ttft_ms.p99); lists are skipped (not one number)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif not isinstance(v, (list, tuple)):
            out[name] = v
    return out


def _display(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def cost_per_m_tokens(price_per_hour: float, devices: int, out_tokens_per_s: float | None) -> float | None:
    """USD per million output tokens: the devices' hourly price over the tokens an hour makes."""
    if not out_tokens_per_s:
        return None
    return price_per_hour * devices / 3600 / out_tokens_per_s * 1e6


def cost_columns(price: float | None, devices: int, out_tokens_per_s: float | None) -> dict[str, Any]:
    """USD per hour of the devices, and USD per million output tokens at the measured throughput."""
    if price is None:
        return {"price_per_hour": None, "cost_per_hour": None, "cost_per_m_output_tokens": None}
    return {"price_per_hour": price, "cost_per_hour": price * devices,
            "cost_per_m_output_tokens": cost_per_m_tokens(price, devices, out_tokens_per_s)}


def row_status(rec: dict[str, Any] | None) -> Status:
    """A point's status from its journal record (did it run) and its metrics (what it shows)."""
    if rec is None:
        return Status.MISSING
    if rec["status"] != "ok":
        return Status.ERROR
    m = rec.get("metrics") or {}
    if not (m.get("requests") or {}).get("completed", 1):
        return Status.EMPTY
    return Status.OVERLOADED if m.get("overloaded") else Status.OK


def _parts(sc: Scenario) -> list[tuple[Any, int]]:
    """(hardware, devices) of each pool: one, or a disaggregated prefill and decode pool."""
    s, dis = sc.serving, sc.serving.disaggregated
    if dis is None:
        return [(load_hardware(sc.hardware), s.tp * s.pp * s.replicas)]
    out = []
    for spec in (dis.prefill, dis.decode):
        ps = pool_serving(s, spec)
        out.append((load_hardware(spec.hardware or sc.hardware), ps.tp * ps.pp * ps.replicas))
    return out


def make_row(p: Point, rec: dict[str, Any] | None) -> dict[str, Any]:
    sc, s = p.scenario, p.scenario.serving
    parts = _parts(sc)
    hw = parts[0][0]
    devices = sum(n for _, n in parts)
    row: dict[str, Any] = {
        "point": p.index, "status": row_status(rec).value, "error": (rec or {}).get("error"),
        "model": load_model(sc.model).name, "hardware": " + ".join(dict.fromkeys(h.name for h, _ in parts)),
        "tp": s.tp, "pp": s.pp,
        "replicas": s.replicas, "devices": devices, "scheduler": s.scheduler,
        "max_batch_size": s.max_batch_size, "rate": sc.workload.arrival.rate, "seed": sc.seed,
    }
    for k, v in p.overrides.items():
        if k not in SHORT:
            row[k] = _display(v)
    metrics = (rec or {}).get("metrics") or {}
    prices = [h.price_per_hour for h, _ in parts]
    price = None if None in prices else sum(h.price_per_hour * n for h, n in parts) / devices  # per device
    row.update(cost_columns(price if len(parts) > 1 else hw.price_per_hour, devices, metrics.get("output_tokens_per_s")))
    row["warnings"] = "; ".join(metrics.get("warnings") or ()) or None
    row["elapsed_s"] = (rec or {}).get("elapsed_s")
    row["cpu_s"] = (rec or {}).get("cpu_s")
    row["key"] = p.key
    for k, v in flatten(metrics).items():
        row.setdefault(k, v)
    return row


def _swept_columns(points: list[Point]) -> list[str]:
    """The inputs that take more than one value (a one-value grid entry is a fixed override)."""
    seen: dict[str, set[str]] = {}
    for p in points:
        for k, v in p.overrides.items():
            seen.setdefault(SHORT.get(k, k), set()).add(json.dumps(v, sort_keys=True, default=str))
    return [c for c, vals in seen.items() if len(vals) > 1]


def write_parquet(rows: list[dict[str, Any]], path: Path) -> bool:
    """Parquet too when pyarrow is there; columns of mixed kinds become text."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    cols: list[str] = list(dict.fromkeys(k for r in rows for k in r))
    data: dict[str, list[Any]] = {}
    for c in cols:
        vals = [r.get(c) for r in rows]
        kinds = {type(v) for v in vals if v is not None}
        if kinds <= {int, float} and kinds != {int, float}:
            data[c] = vals
        elif kinds <= {int, float}:
            data[c] = [None if v is None else float(v) for v in vals]
        elif kinds == {bool} or kinds == {str}:
            data[c] = vals
        else:
            data[c] = [None if v is None else str(v) for v in vals]
    pq.write_table(pa.table(data), path)
    return True


def _write(sw: Sweep, points: list[Point], results: dict[str, dict[str, Any]], out: Path,
           plots: bool) -> SweepResult:
    rows = [make_row(p, results.get(p.key)) for p in points]
    swept = _swept_columns(points)
    res = SweepResult(out=out, rows=rows, swept=swept)
    write_rows(rows, out / "results.csv")
    res.files["csv"] = str(out / "results.csv")
    if write_parquet(rows, out / "results.parquet"):
        res.files["parquet"] = str(out / "results.parquet")
    if plots and any(r["status"] in MEASURED for r in rows):
        res.files.update(plot_sweep(rows, swept, out, sw.name))
    res.files["report"] = str(html_report(sw, res, out / "report.html"))
    return res


# -- plots -----------------------------------------------------------------------------------------
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _config_label(row: dict[str, Any], cols: list[str]) -> str:
    return ", ".join(f"{c}={row.get(c)}" for c in cols) or "all points"


def plot_sweep(rows: list[dict[str, Any]], swept: list[str], out: Path, title: str) -> dict[str, str]:
    """latency_throughput.png: p99 TTFT and TPOT against throughput, one line per configuration
    (over rate); cost_latency.png: cost per million output tokens against p99 latency, with the
    Pareto front (nothing is both faster and cheaper) drawn in red. Overloaded points are red
    crosses and never on the front: their latency measures the run's length."""
    from simulator.reports.plots import plt, save  # matplotlib only when plotting (Agg)

    ok = [r for r in rows if r["status"] in MEASURED and _num(r.get("output_tokens_per_s")) is not None]
    if not ok:
        return {}
    cfg_cols = [c for c in swept if c not in ("rate", "seed")]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        groups.setdefault(_config_label(r, cfg_cols), []).append(r)
    files: dict[str, str] = {}
    over = [r for r in ok if r["status"] == Status.OVERLOADED.value]

    many = len(groups) > 10
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 2, figsize=(15 if many else 12, 4.8))
    for ax, key, label in ((axes[0], "ttft_ms.p99", "p99 TTFT (ms)"), (axes[1], "tpot_ms.p99", "p99 TPOT (ms)")):
        for g, (name, rs) in enumerate(groups.items()):
            rs = sorted(rs, key=lambda r: (_num(r.get("rate")) or 0.0, r["point"]))
            xy = [(_num(r["output_tokens_per_s"]), _num(r.get(key))) for r in rs]
            xy = [(x, y) for x, y in xy if x is not None and y is not None]
            style = {"color": cmap(g % 20), "ls": ("-", "--", ":", "-.")[g // 20 % 4]} if many else {}
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", ms=4, label=name, **style)
        mark = _overloaded(ax, over, "output_tokens_per_s", key)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(label)
        _maybe_log(ax, (_num(r.get(key)) for r in ok))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{title}: latency vs throughput")
    if 1 < len(groups) <= 40:
        axes[1].legend(fontsize=6 if many else 7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if mark is not None:
        axes[0].legend(handles=[mark], fontsize=7, loc="upper left")
    fig.tight_layout()
    files["latency_plot"] = str(out / "latency_throughput.png")
    save(fig, files["latency_plot"])

    costed = [r for r in ok if _num(r.get("cost_per_m_output_tokens")) is not None and r not in over]
    if costed or over:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        for ax, key, label in ((axes[0], "ttft_ms.p99", "p99 TTFT (ms)"), (axes[1], "tpot_ms.p99", "p99 TPOT (ms)")):
            xs = [_num(r.get(key)) for r in costed]
            ys = [_num(r["cost_per_m_output_tokens"]) for r in costed]
            ax.scatter([x for x in xs if x is not None], [y for x, y in zip(xs, ys, strict=True) if x is not None],
                       s=14, c="0.55", label="configurations")
            front = pareto_front(xs, ys)
            if front:
                ax.plot([xs[i] for i in front], [ys[i] for i in front], "r-o", ms=5, drawstyle="steps-post",
                        label="Pareto front")
                if len(front) <= 8:
                    for i in front:
                        ax.annotate(_config_label(costed[i], [c for c in swept if c != "seed"]), (xs[i], ys[i]),
                                    fontsize=6, xytext=(3, 3), textcoords="offset points")
            _overloaded(ax, over, key, "cost_per_m_output_tokens")
            ax.set_xlabel(label)
            ax.set_ylabel("USD per million output tokens")
            _maybe_log(ax, xs + [_num(r.get(key)) for r in over], "x")
            _maybe_log(ax, ys + [_num(r.get("cost_per_m_output_tokens")) for r in over])
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_title(f"{title}: cost vs latency")
        fig.tight_layout()
        files["cost_plot"] = str(out / "cost_latency.png")
        save(fig, files["cost_plot"])
    return files


def _overloaded(ax: Any, rows: list[dict[str, Any]], x_key: str, y_key: str) -> Any:
    """Red crosses over the points whose queue grew without bound; returns the legend handle."""
    xy = [(_num(r.get(x_key)), _num(r.get(y_key))) for r in rows]
    xy = [(x, y) for x, y in xy if x is not None and y is not None]
    if not xy:
        return None
    return ax.scatter(*zip(*xy, strict=True), marker="x", s=70, c="#d62728", zorder=5,
                      label="overloaded: the queue grows, latency is the run's length")


def _maybe_log(ax: Any, values: Iterable[float | None], axis: str = "y") -> None:
    """Log scale when the data span more than 30x (a saturated point dwarfs the rest)."""
    v = [x for x in values if x is not None and x > 0]
    if v and max(v) / min(v) > 30:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# -- the command -----------------------------------------------------------------------------------
TABLE = [("output_tokens_per_s", "tok/s", ".0f"), ("ttft_ms.p99", "p99 TTFT ms", ".1f"),
         ("tpot_ms.p99", "p99 TPOT ms", ".2f"), ("cost_per_m_output_tokens", "$/M tok", ".3f")]


def _columns(swept: Iterable[str]) -> list[str]:
    return [c for c in swept] or ["model", "hardware"]


def format_table(rows: list[dict[str, Any]], swept: Iterable[str], limit: int = 50) -> str:
    cols = _columns(swept)
    head = [*cols, *(h for _, h, _ in TABLE), "status"]
    body = []
    for r in rows[:limit]:
        vals = [f"{r[c]:g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        for k, _, f in TABLE:
            v = _num(r.get(k))
            vals.append(format(v, f) if v is not None else "-")
        vals.append(f"{r['status']}: {r['error'][:60]}" if r.get("error") else r["status"])
        body.append(vals)
    lines = aligned(head, body)
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more rows in results.csv")
    return "\n".join(lines)


def html_report(sw: Sweep, res: SweepResult, path: Path, limit: int = 2000) -> Path:
    """report.html: what was swept, how the points ended, the plots, and the table of results
    (the same columns as the terminal's, every point up to `limit`, and each point's warnings)."""
    from simulator.reports import html

    rows = res.rows
    cols = _columns(res.swept)
    counts = {s.value: res.count(s) for s in Status if res.count(s)}
    body = []
    for i, r in enumerate(rows[:limit]):
        vals: list[Any] = [html.cell(r.get(c), spec="g" if isinstance(r.get(c), float) else None) for c in cols]
        vals += [html.cell(_num(r.get(k)), f"{i}:{k}", f) for k, _, f in TABLE]
        vals += [html.cell(r["status"], f"{i}:status"), r.get("error") or r.get("warnings") or ""]
        body.append(vals)
    plots = [Path(res.files[k]) for k in ("latency_plot", "cost_plot") if k in res.files]
    blocks = [
        html.p(sw.description, "note") if sw.description else "",
        html.p(f"{len(rows):,} points: " + ", ".join(f"{n:,} {s}" for s, n in counts.items())),
        html.warnings([f"{counts['overloaded']:,} points are overloaded: their queue grew without bound, so "
                       "their latency measures the run's length (red crosses in the plots, never on the "
                       "Pareto front)"] if counts.get("overloaded") else []),
        html.h2("Plots"), *(html.image(pl, pl.stem) for pl in plots),
        html.h2("Results"),
        html.table([*cols, *(h for _, h, _ in TABLE), "status", "notes"], body,
                   caption=f"first {limit:,} of {len(rows):,} points; all in results.csv" if len(rows) > limit
                   else "every point; more columns in results.csv"),
    ]
    return html.write_page(path, f"sweep {sw.name}", blocks)
