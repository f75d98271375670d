"""Predict the published serving runs (calibration/data/serving-public) and compare.

Each row of measurements.jsonl is expressed as a scenario under scenarios/published/ (its
`name` is the row's id). This module runs them, maps each published statistic to the
simulator's (below), and reports the relative error of every statistic:

    python3 -m calibration.serving_public            # the table of README "Published runs"
    python3 -m calibration.serving_public --json     # the same as JSON

A statistic is grouped as throughput (output tokens/s, requests/s, batch latency) or latency
(TTFT, TPOT, ITL, E2E): the goals are a 10 % median error on throughput and 15 % on TTFT and
TPOT (tests/test_published.py holds the bounds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "calibration" / "data" / "serving-public" / "measurements.jsonl"
SCENARIOS = ROOT / "scenarios" / "published"

# published statistic -> (summary key, sub-key or None, group)
STATISTICS: dict[str, tuple[str, str | None, str]] = {
    "output_tok_per_s_total": ("output_tokens_per_s", None, "throughput"),
    "output_tok_per_s": ("output_tokens_per_s", None, "throughput"),
    "req_per_s": ("requests_per_s", None, "throughput"),
    "mean_latency_ms": ("e2e_ms", "mean", "throughput"),  # a static batch's latency: its throughput
    "median_latency_ms": ("e2e_ms", "p50", "throughput"),
    "mean_ttft_ms": ("ttft_ms", "mean", "ttft"),
    "median_ttft_ms": ("ttft_ms", "p50", "ttft"),
    "p99_ttft_ms": ("ttft_ms", "p99", "ttft"),
    "mean_tpot_ms": ("tpot_ms", "mean", "tpot"),
    "median_tpot_ms": ("tpot_ms", "p50", "tpot"),
    "median_itl_ms": ("itl_ms", "p50", "itl"),
    "median_e2e_ms": ("e2e_ms", "p50", "e2e"),
}
# p99 of a 15-iteration latency run repeats the mean; not compared (it adds no information)
SKIP = {"p99_latency_ms"}


def measurements() -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in (json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()
                                  if line.strip())}


def scenario_files() -> dict[str, Path]:
    """Row id -> its scenario file (the file's `name`)."""
    from simulator.serving.scenario import load_scenario

    return {load_scenario(p).name: p for p in sorted(SCENARIOS.glob("*.yaml"))}


def compare(row: dict[str, Any], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per published statistic of the row: measured, predicted, error, group."""
    out = []
    for stat, measured in row["results"].items():
        if stat in SKIP:
            continue
        key, sub, group = STATISTICS[stat]
        pred = summary[key] if sub is None else summary[key][sub]
        err = None if pred is None else pred / measured - 1.0
        out.append({"id": row["id"], "statistic": stat, "group": group, "measured": measured, "predicted": pred,
                    "error": err})
    return out


def run(ids: list[str] | None = None, sets: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Simulate each row's scenario (`sets`: --set overrides per id) and compare."""
    from simulator.reports.metrics import summarize
    from simulator.serving.engine import simulate
    from simulator.serving.scenario import load_scenario

    rows = measurements()
    files = scenario_files()
    out = []
    for rid in ids or sorted(files):
        t = time.perf_counter()
        s = summarize(simulate(load_scenario(files[rid], (sets or {}).get(rid, ()))))
        wall = time.perf_counter() - t
        for c in compare(rows[rid], s):
            out.append({**c, "wall_s": wall, "scenario": str(files[rid].relative_to(ROOT))})
    return out


# -- fitting the stacks' overheads ------------------------------------------------------------------
# Which published statistics fix which overhead (simulator/serving/stacks.py holds the values):
# each row of FIT moves one parameter of one stack family until the simulated statistics (their
# mean, when several) equal the measured ones; the request time moves TTFT one for one, the step
# times move TPOT and latency. Parameters not listed keep the stacks module's documented values.
FIT: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (family's presets joined by +, parameter, [(row, statistic), ...])
    ("sglang-v0.3", "step_us+step_seq_us", [("R34", "median_tpot_ms"), ("R36", "median_tpot_ms")]),
    ("vllm-v0", "step_us", [("R52", "mean_latency_ms")]),
    ("vllm-v1", "step_us", [("R43", "median_tpot_ms")]),
    ("sglang-v0.3+sglang", "request_ms", [("R34", "median_ttft_ms"), ("R36", "median_ttft_ms"),
                                          ("R44", "median_ttft_ms"), ("R44", "mean_ttft_ms")]),
    ("vllm-v1", "request_ms", [("R43", "median_ttft_ms"), ("R43", "mean_ttft_ms")]),
    ("trtllm", "request_ms", [("R45", "median_ttft_ms"), ("R45", "mean_ttft_ms")]),
]


def _sets(params: dict[str, float]) -> list[str]:
    out = []
    for k, v in params.items():
        if k == "request_ms":  # split evenly between the way in and the way out (client metrics cannot tell)
            out += [f"serving.overheads.request_in_ms={v / 2}", f"serving.overheads.request_out_ms={v / 2}"]
        else:
            out.append(f"serving.overheads.{k}={v}")
    return out


def _stack_of(rid: str) -> str:
    from simulator.serving.scenario import load_scenario

    return str(load_scenario(scenario_files()[rid]).serving.stack)


def _predict(targets: list[tuple[str, str]], cur: dict[str, dict[str, float]],
             params: dict[str, float]) -> list[tuple[float, float]]:
    """(predicted, measured) of each target, each row with its stack's current overheads and `params`."""
    ids = sorted({rid for rid, _ in targets})
    sets = {}
    for rid in ids:
        o = cur[_stack_of(rid)]
        sets[rid] = _sets({"request_ms": o["request_in_ms"] + o["request_out_ms"], "step_us": o["step_us"],
                           "step_seq_us": o["step_seq_us"], **params})
    res = {(r["id"], r["statistic"]): r for r in run(ids, sets)}
    return [(res[t]["predicted"], res[t]["measured"]) for t in targets]


def _errors(targets: list[tuple[str, str]], cur: dict[str, dict[str, float]], names: list[str],
            xs: list[float]) -> list[float]:
    """The relative error of each target (one parameter: their mean) with parameters `names` = xs."""
    e = [p / m - 1.0 for p, m in _predict(targets, cur, dict(zip(names, xs, strict=True)))]
    return e if len(xs) > 1 else [sum(e) / len(e)]


def fit(start: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Solve each FIT entry in turn from `start` (stack -> overheads): Newton steps on the
    relative errors with a finite-difference Jacobian (one parameter: the mean error of its
    targets; two: one target each); later entries see earlier results. Returns the fitted
    overheads per stack."""
    import numpy as np

    cur = {k: dict(v) for k, v in start.items()}
    for family, what, targets in FIT:
        stack = family.split("+")[0]
        names = what.split("+")
        if what == "request_ms":
            x = [cur[stack]["request_in_ms"] + cur[stack]["request_out_ms"]]
        else:
            x = [cur[stack][n] for n in names]
        for _ in range(4):
            e0 = _errors(targets, cur, names, x)
            if max(abs(v) for v in e0) < 0.002:
                break
            jac = []
            for j in range(len(x)):
                h = max(abs(x[j]) * 0.2, 50.0 if what != "request_ms" else 2.0)
                xj = list(x)
                xj[j] += h
                jac.append([(a - b) / h for a, b in zip(_errors(targets, cur, names, xj), e0, strict=True)])
            step = np.linalg.solve(np.array(jac).T, -np.array(e0))
            x = [max(0.0, a + b) for a, b in zip(x, step.tolist(), strict=True)]
        for fam in family.split("+"):
            if what == "request_ms":
                cur[fam].update(request_in_ms=x[0] / 2, request_out_ms=x[0] / 2)
            else:
                cur[fam].update(dict(zip(names, x, strict=True)))
        print(f"{family}: {what} = {', '.join(f'{v:.1f}' for v in x)} from "
              f"{', '.join(f'{r}:{s}' for r, s in targets)}", file=sys.stderr)
    return cur


def medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median absolute error per group."""
    import numpy as np

    groups: dict[str, list[float]] = {}
    for r in results:
        if r["error"] is not None:
            groups.setdefault(r["group"], []).append(abs(r["error"]))
    return {g: float(np.median(v)) for g, v in sorted(groups.items())}


FITTED = {t for _, _, targets in FIT for t in targets}  # (row, statistic) pairs an overhead was fitted to


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: every statistic, and the median errors of all and of those no overhead was fitted to."""
    lines = ["| row | statistic | measured | predicted | error | fitted |", "|---|---|---:|---:|---:|---|"]
    for r in results:
        p = "n/a" if r["predicted"] is None else _num(r["predicted"])
        e = "n/a" if r["error"] is None else f"{r['error']:+.1%}"
        fitted = "yes" if (r["id"], r["statistic"]) in FITTED else ""
        lines.append(f"| {r['id']} | {r['statistic']} | {_num(r['measured'])} | {p} | {e} | {fitted} |")
    lines.append("")
    lines.append("median |error|, all: " + ", ".join(f"{g} {v:.1%}" for g, v in medians(results).items()))
    held = [r for r in results if (r["id"], r["statistic"]) not in FITTED]
    lines.append("median |error|, not fitted: " + ", ".join(f"{g} {v:.1%}" for g, v in medians(held).items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the comparison as JSON")
    ap.add_argument("--fit", action="store_true", help="fit the stacks' overheads that the rows measure (FIT) and "
                    "print them")
    ap.add_argument("ids", nargs="*", help="row ids (default: all)")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    if args.fit:
        from simulator.serving.stacks import PRESETS

        start = {name: dict(st.defaults["overheads"]) for name, st in PRESETS.items()}
        print(json.dumps({k: {p: round(v, 1) for p, v in o.items()} for k, o in fit(start).items()}, indent=1))
        return 0
    res = run(args.ids or None)
    if args.json:
        print(json.dumps({"results": res, "median_abs_error": medians(res)}, indent=1))
    else:
        print(table(res))
        print(f"({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
