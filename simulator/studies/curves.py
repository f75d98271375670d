"""`momentsim curves`: how a moment's length and its make-up grow with batch size, context and
prompt length, for one serving configuration.

A single `momentsim step` answers for one batch; the questions people ask ("where does batching
stop being free?", "when does attention take over?") are about slopes, so this walks a log-spaced
grid and asks StepModel.cost at every point. Decode (a) vs batch and (b) vs context are the same
grid read two ways; (c) is a batch-1 prefill vs prompt length. A point whose KV cache does not
fit on the device is no step a server could run: it is marked "does not fit" and carries no
numbers, so it cannot be mistaken for one.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from hwmodels.errors import InputError
from hwmodels.spec import Hardware
from simulator.moment.cost import StepModel, step_model
from simulator.moment.memory import check_fits
from simulator.moment.model import ModelSpec
from simulator.moment.ops import CATEGORIES, Batch, Dtypes
from simulator.reports.tables import write_rows

MAX_VALUE = 1 << 20  # a larger prompt or batch would only build huge cost tables, never a real step


def parse_list(text: str, flag: str) -> list[int]:
    """Comma-separated positive integers, sorted and without repeats, so every curve runs left to right."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(flag, text, "expected comma-separated whole numbers, e.g. 1,2,4,8") from None
    if not vals:
        raise InputError(flag, text, "give at least one value, e.g. 1,2,4,8")
    bad = [v for v in vals if not 1 <= v <= MAX_VALUE]
    if bad:
        raise InputError(flag, text, f"values must be 1..{MAX_VALUE}, got {bad[0]}")
    return sorted(set(vals))


def point(sm: StepModel, cap: int, batch: int, length: int, prefill: bool) -> dict[str, Any]:
    """One grid point. Its KV: B decodes with C cached hold B x (C + 1) tokens (as `momentsim step`
    counts them), B prompts of n tokens hold B x n. Per token means per new token of the step."""
    kv = batch * length if prefill else batch * (length + 1)
    p: dict[str, Any] = {"batch": batch, "prompt" if prefill else "context": length, "kv_tokens": kv,
                         "fits": kv <= cap}
    if not p["fits"]:
        p["note"] = "does not fit"
        return p
    b = Batch.of(prefill=[(batch, length)]) if prefill else Batch.of(decode=[(batch, length)])
    c = sm.cost(b)
    p.update(step_ms=c.step_ms, device_ms=c.device_ms, host_ms=c.host_ms, per_token_ms=c.step_ms / b.tokens,
             tokens_per_s=b.tokens / (c.step_ms * 1e-3), cycles=round(c.step_ms * 1e-3 * sm.hw.device.clock_ghz * 1e9),
             share={k: v / c.step_ms for k, v in c.breakdown_ms.items()})
    return p


def compute(model: ModelSpec, hw: Hardware, tp: int, pp: int, mode: str, dt: Dtypes, batches: list[int],
            contexts: list[int], prompts: list[int], kernels: str = "fused") -> dict[str, Any]:
    """The three curves. A model that cannot hold even the smallest point is one InputError."""
    least = min(min(batches) * (min(contexts) + 1), min(prompts))
    cap = check_fits(model, hw, tp, pp, dt, min_tokens=least, where="--model/--hardware").kv_capacity_tokens
    sm = step_model(model, hw, tp, pp, mode, dt, kernels=kernels)
    grid = {(b, c): point(sm, cap, b, c, False) for c in contexts for b in batches}
    cfg = {"model": model.name, "hardware": hw.name, "tp": tp, "pp": pp, "mode": mode, "kernels": kernels,
           "dtypes": vars(dt),
           "clock_ghz": hw.device.clock_ghz, "kv_capacity_tokens": cap, "batches": batches, "contexts": contexts,
           "prompts": prompts, "middle_context": contexts[len(contexts) // 2]}
    return {"config": cfg,
            "decode_vs_batch": [grid[b, c] for c in contexts for b in batches],
            "decode_vs_context": [grid[b, c] for b in batches for c in contexts],
            "prefill_vs_prompt": [point(sm, cap, 1, n, True) for n in prompts]}


def _label(cfg: dict[str, Any]) -> str:
    dt = cfg["dtypes"]
    return (f"{cfg['model']} on {cfg['hardware']} (tp={cfg['tp']}, pp={cfg['pp']}, {cfg['mode']}, weights "
            f"{dt['weight']}, kv {dt['kv']})")


def _top(p: dict[str, Any], n: int = 3) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(p["share"].items(), key=lambda kv: -kv[1])[:n])


def table(res: dict[str, Any]) -> str:
    """Step ms and tokens/s as context x batch matrices, then the rows behind the two share views."""
    cfg = res["config"]
    out = [f"{_label(cfg)}: KV for {cfg['kv_capacity_tokens']:,} tokens, clock {cfg['clock_ghz']} GHz"]
    grid = {(p["batch"], p["context"]): p for p in res["decode_vs_batch"]}
    for title, key, fmt in (("decode step [ms]", "step_ms", "{:.4g}"), ("decode throughput [tokens/s]",
                                                                      "tokens_per_s", "{:,.0f}")):
        out += ["", f"{title}; rows: context, columns: batch; '-': KV does not fit",
                "context " + "".join(f"{b:>9}" for b in cfg["batches"])]
        out += [f"{c:>7} " + "".join(f"{fmt.format(grid[b, c][key]) if grid[b, c]['fits'] else '-':>9}"
                                     for b in cfg["batches"]) for c in cfg["contexts"]]
    head = "{:>7} {:>9} {:>9} {:>8} {:>9} {:>10} {:>9}  {}"
    for name, key, pts in ((f"decode at context {cfg['middle_context']}", "batch",
                            [grid[b, cfg["middle_context"]] for b in cfg["batches"]]),
                           ("prefill, batch 1", "prompt", res["prefill_vs_prompt"])):
        out += ["", name, head.format(key, "step ms", "device", "host", "ms/token", "tokens/s", "Mcycles",
                                      "largest shares")]
        for p in pts:
            out.append(head.format(p[key], f"{p['step_ms']:.4g}", f"{p['device_ms']:.4g}", f"{p['host_ms']:.3g}",
                                   f"{p['per_token_ms']:.3g}", f"{p['tokens_per_s']:,.0f}",
                                   f"{p['cycles'] / 1e6:.4g}", _top(p)) if p["fits"] else f"{p[key]:>7}  does not fit")
    return "\n".join(out)


def write_csv(res: dict[str, Any], path: Path) -> None:
    """One row per point (decode grid once, then prefills): the spreadsheet view of the JSON."""
    cols = ["curve", "batch", "context", "prompt", "kv_tokens", "fits", "step_ms", "device_ms", "host_ms",
            "per_token_ms", "tokens_per_s", "cycles", *(f"share_{c}" for c in CATEGORIES)]
    write_rows([{"curve": curve, **p, **{f"share_{k}": v for k, v in p.get("share", {}).items()}}
                for curve, pts in (("decode", res["decode_vs_batch"]), ("prefill", res["prefill_vs_prompt"]))
                for p in pts], path, cols)


def plot(res: dict[str, Any], path: Path) -> None:
    """Four panels: the three curves, and where a decode step's time goes as the batch grows.
    Where the host holds the step up (eager, CPUs) the device's own time is drawn dashed, since
    the flat step alone would hide how the work grows underneath it."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.ticker import FuncFormatter

    from simulator.reports.plots import _empty, _log_x, plt, save

    cfg = res["config"]
    fig, ((a1, a2), (a3, a4)) = plt.subplots(2, 2, figsize=(14, 9.5))
    dec = [p for p in res["decode_vs_batch"] if p["fits"]]
    host_bound = any(p["share"]["host"] > 0.2 for p in dec)
    for ax, line_key, x_key, what in ((a1, "context", "batch", "batch size [sequences]"),
                                      (a2, "batch", "context", "context [tokens cached]")):
        keys = cfg["contexts"] if line_key == "context" else cfg["batches"]
        colors = [plt.get_cmap("viridis")(0.9 * i / max(1, len(keys) - 1)) for i in range(len(keys))]
        for k, col in zip(keys, colors, strict=True):
            ok = [p for p in dec if p[line_key] == k]
            x = [p[x_key] for p in ok]
            ax.plot(x, [p["step_ms"] for p in ok], "o-", ms=3, lw=1.6, color=col)
            if host_bound:
                ax.plot(x, [p["device_ms"] for p in ok], "--", lw=1.0, color=col)
        if host_bound:
            ax.plot([], [], "k-", label="step")
            ax.plot([], [], "k--", lw=1.0, label="device busy (host issues slower)")
            ax.legend(loc="lower right", fontsize=8)
        sm = plt.cm.ScalarMappable(BoundaryNorm(range(len(keys) + 1), len(keys)), ListedColormap(colors))
        cb = fig.colorbar(sm, ax=ax, ticks=[i + 0.5 for i in range(len(keys))], pad=0.02, aspect=30)
        cb.ax.set_yticklabels([f"{k:,}" for k in keys], fontsize=7)
        cb.set_label(f"one line per {line_key}", fontsize=8)
        ax.set_title(f"({'ab'[ax is a2]}) decode step vs {x_key}")
        ax.set_xlabel(f"{what} (log scale)")
    pre = [p for p in res["prefill_vs_prompt"] if p["fits"]]
    if pre:
        x = [p["prompt"] for p in pre]
        att = [p["step_ms"] * p["share"]["attention"] for p in pre]
        a3.plot(x, [p["step_ms"] for p in pre], "o-", ms=3, lw=1.8, color="#d95f02", label="whole step")
        a3.plot(x, att, "s--", ms=3, lw=1.2, color="#7570b3", label="attention (grows with the square)")
        a3.plot(x, [p["step_ms"] - a for p, a in zip(pre, att, strict=True)], "^:", ms=3, lw=1.2,
                color="#1b9e77", label="the rest of the step")
        a3.set_yscale("log")
        a3.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:,g}"))
        a3.legend(fontsize=8)
    a3.set_title("(c) prefill of one prompt vs its length")
    a3.set_xlabel("prompt length [tokens] (log scale)")
    for ax in (a1, a2, a3):
        if not ax.lines:
            _empty(ax, "no point fits in memory")
            continue
        _log_x(ax)
        ax.grid(alpha=0.3, which="both")
        if ax is not a3:
            ax.set_ylim(0, ax.get_ylim()[1] * 1.08)  # from 0: a doubling looks like one
        ax.set_ylabel("step [ms]" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    mid = [p for p in dec if p["context"] == cfg["middle_context"]]
    if mid:
        x = [p["batch"] for p in mid]
        big = [c for c in CATEGORIES if max(p["share"][c] for p in mid) >= 0.03]
        small = [c for c in CATEGORIES if c not in big and any(p["share"][c] > 0 for p in mid)]
        groups = [[c] for c in big] + ([small] if small else [])  # categories under 3% share one band
        ys = [[100 * sum(p["share"][c] for c in g) for p in mid] for g in groups]
        labels = big + [textwrap.fill("other: " + ", ".join(small), 28)] * bool(small)
        tab = plt.get_cmap("tab20")  # one colour per category wherever it appears; dark shades first
        colors = [tab(2 * i % 20 + (i >= 10)) for i in map(CATEGORIES.index, big)] + ["0.8"] * bool(small)
        if len(x) == 1:  # one batch size: a band around it, else the stack has no width
            x, ys = [x[0] / 1.25, x[0] * 1.25], [y * 2 for y in ys]
        a4.stackplot(x, ys, labels=labels, colors=colors, edgecolor="white", lw=0.4)
        a4.set_xlim(min(x), max(x))
        _log_x(a4)
        if len(mid) == 1:
            a4.set_xticks([mid[0]["batch"]], [f"{mid[0]['batch']:,}"])
        a4.set_ylim(0, 100)
        a4.set_ylabel("share of the step [%]")
        a4.set_xlabel("batch size [sequences] (log scale)")
        h, lab = a4.get_legend_handles_labels()  # top of the stack first, as the eye reads it
        a4.legend(h[::-1], lab[::-1], loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    else:
        _empty(a4, "no point fits in memory")
    a4.set_title(f"(d) where a decode step goes vs batch, context {cfg['middle_context']:,}")
    fig.suptitle(f"How a moment grows: {_label(cfg)}\npoints whose KV does not fit ({cfg['kv_capacity_tokens']:,} "
                 "tokens) are left out", fontsize=11)
    fig.tight_layout()
    save(fig, path)
