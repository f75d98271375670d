"""report.html: one self-contained page per run, sweep or plan that opens from disk in any
browser. Plots are embedded as base64 PNG, the style is inline, there is no script and nothing
is fetched, so the file can be mailed or attached to a ticket as it is.

The page shows the same numbers as the JSON: each number is written with `cell`, which keeps
three significant digits or more (metrics.num) and marks the cell with the JSON key it shows
(`data-key`), so a test can read the rendered page back and compare.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from simulator.reports.metrics import num

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
th { background: #f5f5f5; } td.n { text-align: right; }
.warn { background: #fdecea; border-left: 4px solid #d62728; padding: .5em 1em; margin: .4em 0; color: #8b1a1a; }
.note { color: #666; } img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
.scroll { overflow-x: auto; }
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def fmt(value: Any, spec: str | None = None) -> str:
    """A number for the page: `spec` if given, else metrics.num; None is 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if spec:
        return format(value, spec)
    return f"{value:,}" if isinstance(value, int) else num(value)


def cell(value: Any, key: str | None = None, spec: str | None = None) -> str:
    """A table cell (already HTML): numbers right-aligned and tagged with the JSON key they show."""
    cls = ' class="n"' if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    tag = f' data-key="{esc(key)}"' if key else ""
    return f"<td{cls}{tag}>{esc(fmt(value, spec))}</td>"


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    """A table from plain values (escaped) or cells made by `cell` (strings starting '<td')."""
    def td(v: Any) -> str:
        return v if isinstance(v, str) and v.startswith("<td") else cell(v)

    body = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in rows)
    cap = f"<caption class=note>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{cap}<thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr>'
            f"</thead><tbody>{body}</tbody></table></div>")


def image(path: str | Path, alt: str) -> str:
    """A PNG embedded in the page (no file beside it needed)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def warnings(lines: Iterable[str]) -> str:
    return "".join(f'<div class="warn">{esc(w)}</div>' for w in lines)


def h2(text: str) -> str:
    return f"<h2>{esc(text)}</h2>"


def p(text: str, cls: str = "") -> str:
    return f'<p{f" class={cls}" if cls else ""}>{esc(text)}</p>'


def write_page(path: Path, title: str, blocks: Iterable[str]) -> Path:
    """The page: a title, then the blocks in order."""
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
           f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{''.join(blocks)}</body></html>\n")
    path.write_text(doc, encoding="utf-8")
    return path


# -- one run --------------------------------------------------------------------------------------
LATENCIES = (("TTFT", "ttft_ms"), ("of which queue", "ttft_split_ms.queue"), ("of which prefill", "ttft_split_ms.prefill"),
             ("of which front end", "ttft_split_ms.overheads"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"),
             ("E2E", "e2e_ms"))


def _at(s: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of the summary (None if a part is missing)."""
    for part in path.split("."):
        s = s.get(part) if isinstance(s, dict) else None
    return s


def run_report(s: dict[str, Any], plots: Sequence[Path], path: Path) -> Path:
    """`momentsim run --out`: the summary, latency and moment tables, where the time goes, the plots."""
    c, req = s.get("config", {}), s["requests"]
    title = f"{c.get('scenario', 'run')}: {c.get('model', '?')} on {c.get('hardware', '?')}"
    stack = f"stack {c['stack']['name']}, " if isinstance(c.get("stack"), dict) else ""
    setup = (f"{stack}tp={c.get('tp', '?')}, pp={c.get('pp', '?')}, replicas={c.get('replicas', '?')}, "
             f"{c.get('scheduler', '?')} batching, {c.get('mode', '?')} mode, seed {c.get('seed', '?')}")
    status = "OVERLOADED" if s.get("overloaded") else "no completed request" if not req["completed"] else "ok"
    summary = [
        ("status", cell(status)),
        ("requests arrived", cell(req["arrived"], "requests.arrived")),
        ("completed", cell(req["completed"], "requests.completed")),
        ("rejected", cell(req["rejected"], "requests.rejected")),
        ("makespan [s]", cell(s["makespan_s"], "makespan_s")),
        ("output tokens/s", cell(s["output_tokens_per_s"], "output_tokens_per_s")),
        ("requests/s", cell(s["requests_per_s"], "requests_per_s")),
        ("MFU", cell(s["mfu"], "mfu", ".2%") if s["mfu"] is not None else cell(None)),
        ("MBU", cell(s["mbu"], "mbu", ".2%") if s["mbu"] is not None else cell(None)),
        ("KV cache peak", cell(s["kv"]["peak_frac"], "kv.peak_frac", ".1%") if s["kv"]["peak_frac"] is not None
         else cell(None)),
        ("preemptions", cell(s["preemptions"]["total"], "preemptions.total")),
    ]
    g = s["goodput"]
    if g["slo"]:
        summary.append(("goodput [requests/s within SLO]", cell(g["requests_per_s"], "goodput.requests_per_s")))
    lat = [[name, *(cell(_at(s, f"{key}.{k}"), f"{key}.{k}") for k in ("mean", "p50", "p90", "p99"))]
           for name, key in LATENCIES if isinstance(_at(s, key), dict)]
    mk = s["moments_by_kind"]
    moments = [[kind, cell(mk[kind]["count"], f"moments_by_kind.{kind}.count"),
                cell(mk[kind]["mean"], f"moments_by_kind.{kind}.mean"),
                cell(mk[kind]["p50"], f"moments_by_kind.{kind}.p50"),
                cell(mk[kind]["p99"], f"moments_by_kind.{kind}.p99")] for kind in ("prefill", "decode")]
    shares = sorted(s["breakdown_share"].items(), key=lambda kv: -kv[1])
    blocks = [
        p(setup, "note"), warnings(s.get("warnings", ())),
        h2("Summary"), table(["", "value"], summary),
        h2("Latency [ms]"),
        table(["", "mean", "p50", "p90", "p99"], lat,
              caption=f"completed requests only: {req['completed']:,} of {req['arrived']:,}"),
        h2("Moments [ms]"), table(["", "count", "mean", "p50", "p99"], moments),
        h2("Where the time goes"),
        table(["operation", "share of busy time"], [[k, cell(v, f"breakdown_share.{k}", ".1%")] for k, v in shares]),
        h2("Plots"), *(image(pl, pl.stem) for pl in plots),
    ]
    return write_page(path, title, blocks)
