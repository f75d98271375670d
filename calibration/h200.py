"""The H200 check: momentsim's own H200 measurements (calibration/data/h200-2026-11-30) refitted
and held against the whole steps measured on the same machine. No GPU needed.

    python -m calibration.h200 --check      # refit, print the report, exit 1 if a bound fails
    python -m calibration.h200 --write      # ... and write calibration/REPORT-h200.md

1. Refit the 5,479 raw microbenchmark records (what `momentsim calibrate --refit` does): it
   must reproduce calibration/profiles/h200-sxm.json, the profile the h200-sxm preset uses.
2. Attention held out by model: each model's attention records predicted from parameters
   fitted on the other models' (issue 10: at most 10 % median and 30 % worst).
3. The whole steps of validation-eager.json (plain PyTorch, eager: decode steps, prefills,
   static generations of three Llamas) predicted with the refitted profile (targets: 10 %
   median per family), and with what a user without an H200 had before: the h200-sxm preset
   with the H100's published-data efficiencies and the H100 host (`efficiency_from: h100-sxm`).
4. The H200's microbenchmarks predicted with those borrowed efficiencies: the error a user
   without their own GPU should expect, op by op.

The llama-3.2-1b decode_step cases are not held to the targets: that run started under load
(load average 2.18) and its two decode steps measured 16 ms, while the same model's static
generation on the same run implies about 9 ms per decode step (`disturbed` checks this).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from calibration.fit import attention_held_out, error_table, predict, rel_errors, summary
from hwmodels.load import read_profile
from hwmodels.spec import Hardware
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "calibration" / "data" / "h200-2026-11-30"
RAW = DATA / "profile-full.json"
VALIDATION = DATA / "validation-eager.json"
PROFILE = REPO / "calibration" / "profiles" / "h200-sxm.json"
REPORT = REPO / "calibration" / "REPORT-h200.md"
FAMILIES = ("decode_step", "prefill", "generation")
TARGET_MEDIAN = 0.10
ATTN_MEDIAN, ATTN_WORST = 0.10, 0.30
DT = Dtypes("bf16", "bf16", "bf16")


def refit(out: Path) -> dict[str, Any]:
    """`momentsim calibrate --refit RAW --base h200-sxm --out out`."""
    from calibration.calibrate import refit as _refit

    return _refit(RAW, out, base="h200-sxm")


def borrowed() -> Hardware:
    """The h200-sxm preset as a user without an H200 had it: the H100's fitted efficiencies and
    host (published data, `efficiency_from: h100-sxm`) on the H200's own peaks and bandwidth."""
    from hwmodels.load import _committed_profile, _raw_preset, deep_merge, hardware_from_dict

    raw = _raw_preset("h200-sxm")
    h100 = _committed_profile("h100-sxm")
    assert h100 is not None
    fields = h100.hardware.model_dump()
    raw = deep_merge(raw, {"efficiency": fields["efficiency"], "host": fields["host"]})
    raw["profile"] = "calibration/profiles/h100-sxm.json (efficiency_from)"
    return hardware_from_dict(raw, "h200-sxm with the H100's efficiencies")


def cases() -> list[dict[str, Any]]:
    return [c for c in json.loads(VALIDATION.read_text(encoding="utf-8"))["cases"] if c["family"] in FAMILIES]


def predict_case(c: dict[str, Any], hw: Hardware) -> float:
    """ms of one validation case, predicted as `momentsim validate` predicts it."""
    from calibration.validate import predict_case as predict

    return predict(c, hw, "cuda")


def disturbed(cs: list[dict[str, Any]], hw: Hardware) -> dict[str, float]:
    """Decode-step cases that disagree with their own run: the ms per decode step that each
    model's static generation implies (its time less the predicted prefill, over its decode
    steps) against the decode_step cases measured; a case above 1.5x is marked disturbed."""
    out: dict[str, float] = {}
    for g in (c for c in cs if c["family"] == "generation"):
        s = g["shape"]
        spec = load_model(g["model"]).model_copy(update={"num_hidden_layers": g["layers"]})
        from calibration.validate import predict_step

        prefill = predict_step(spec, hw, Batch.of(prefill=[(s["batch"], s["prompt"])]), "eager", DT)
        implied = (g["measured_ms"] - prefill) / (s["new"] - 1)
        for c in cs:
            if c["family"] == "decode_step" and c["model"] == g["model"] and c["measured_ms"] > 1.5 * implied:
                out[c["label"]] = round(implied, 3)
    return out


def family_errors(cs: list[dict[str, Any]], preds: list[float], skip: set[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for fam in FAMILIES:
        e = [p / c["measured_ms"] - 1 for c, p in zip(cs, preds, strict=True) if c["family"] == fam
             and c["label"] not in skip]
        out[fam] = summary(np.array(e))
    return out


def evaluate(profile_path: Path | None = None) -> dict[str, Any]:
    """Everything the report says, from a refit into a temporary folder (or `profile_path`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = profile_path or Path(tmp) / "h200-sxm.json"
        if profile_path is None:
            refit(path)
        prof = read_profile(path)
    hw = prof.hardware
    committed = read_profile(PROFILE).hardware if PROFILE.exists() else None
    cs = cases()
    skip = disturbed(cs, hw)
    ours = [predict_case(c, hw) for c in cs]
    old = borrowed()
    theirs = [predict_case(c, old) for c in cs]
    recs = [r for r in prof.measurements if r.get("fitted")]
    meas = np.array([r["ms"] for r in recs], dtype=float)
    timer = float(prof.fit.get("timer_us", 0.0))
    return {
        "reproduces_committed": committed is not None and committed.efficiency == hw.efficiency
        and committed.host == hw.host,
        "fit_per_kind": prof.fit["per_kind"],
        "attention_held_out": attention_held_out(prof.measurements, hw, timer),
        "disturbed": skip,
        "cases": [{"family": c["family"], "label": c["label"], "measured_ms": c["measured_ms"],
                   "predicted_ms": round(p, 3), "borrowed_ms": round(q, 3)}
                  for c, p, q in zip(cs, ours, theirs, strict=True)],
        "families": family_errors(cs, ours, set(skip)),
        "families_borrowed": family_errors(cs, theirs, set(skip)),
        "micro_borrowed": error_table(recs, predict(recs, old, timer), key=lambda r: r["op"]),
        "micro_borrowed_all": summary(rel_errors(predict(recs, old, timer), meas)),
        "micro_ours_all": prof.fit and {k: prof.fit[k] for k in ("cases", "median_abs_err", "worst_abs_err")},
        "params": prof.fit["params"],
    }


def failures(ev: dict[str, Any]) -> list[str]:
    out = []
    if not ev["reproduces_committed"]:
        out.append(f"{PROFILE} is not what --refit gives: refit and commit it")
    a = ev["attention_held_out"]["all"]
    if a["median_abs_err"] > ATTN_MEDIAN or a["worst_abs_err"] > ATTN_WORST:
        out.append(f"attention held out by model: median {a['median_abs_err']:.3f}, worst {a['worst_abs_err']:.3f}")
    for fam, s in ev["families"].items():
        if s["median_abs_err"] > TARGET_MEDIAN:
            out.append(f"{fam}: median {s['median_abs_err']:.3f} over {s['cases']} cases")
    return out


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def markdown(ev: dict[str, Any]) -> str:
    lines = ["# H200: momentsim's own measurements, refitted and checked on whole steps", "",
             "Generated by `python -m calibration.h200 --write` from `calibration/data/h200-2026-11-30` "
             "(no GPU needed). The profile is `calibration/profiles/h200-sxm.json` "
             f"({'reproduced' if ev['reproduces_committed'] else 'NOT reproduced'} by the refit).", "",
             "## Whole steps (validation-eager.json: plain PyTorch, eager, bf16)", "",
             "| family | cases | median, H200 profile | worst | median, H100 efficiencies borrowed | worst |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for fam in FAMILIES:
        a, b = ev["families"][fam], ev["families_borrowed"][fam]
        lines.append(f"| {fam} | {a['cases']} | {_pct(a['median_abs_err'])} | {_pct(a['worst_abs_err'])} | "
                     f"{_pct(b['median_abs_err'])} | {_pct(b['worst_abs_err'])} |")
    if ev["disturbed"]:
        lines += ["", "Not counted (a disturbed run: the model's own generation implies the ms per decode step "
                  "in brackets): " + ", ".join(f"{k} [{v} ms]" for k, v in ev["disturbed"].items()) + "."]
    lines += ["", "| case | measured ms | H200 profile ms | error | H100 borrowed ms | error |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for c in ev["cases"]:
        m = c["measured_ms"]
        lines.append(f"| {c['label']} | {m:.2f} | {c['predicted_ms']:.2f} | {(c['predicted_ms'] / m - 1) * 100:+.1f} % | "
                     f"{c['borrowed_ms']:.2f} | {(c['borrowed_ms'] / m - 1) * 100:+.1f} % |")
    a = ev["attention_held_out"]
    lines += ["", "## Attention held out by model", "",
              "Each model's SDPA records (prefill and decode, with the two index_copy_ cache writes) predicted "
              "from attention parameters fitted on the other models' records.", "",
              "| held-out model | cases | median | worst |", "| --- | ---: | ---: | ---: |"]
    for m, s in a["per_model"].items():
        lines.append(f"| {m} | {s['cases']} | {_pct(s['median_abs_err'])} | {_pct(s['worst_abs_err'])} |")
    lines.append(f"| all | {a['all']['cases']} | {_pct(a['all']['median_abs_err'])} | {_pct(a['all']['worst_abs_err'])} |")
    lines += ["", "## The microbenchmarks: fitted, and predicted with the H100's efficiencies", "",
              "What a user without an H200 should expect op by op: the H200's own microbenchmarks predicted "
              "with the H100's published-data fit (its fractions of peak on the H200's peaks and bandwidth).", "",
              "| op kind | cases | fit median | fit worst | H100-borrowed median | worst |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for k, s in ev["fit_per_kind"].items():
        b = ev["micro_borrowed"].get(k)
        if b is None or not b["cases"]:
            continue
        lines.append(f"| {k} | {s['cases']} | {_pct(s['median_abs_err'])} | {_pct(s['worst_abs_err'])} | "
                     f"{_pct(b['median_abs_err'])} | {_pct(b['worst_abs_err'])} |")
    o, b = ev["micro_ours_all"], ev["micro_borrowed_all"]
    lines.append(f"| all | {o['cases']} | {_pct(o['median_abs_err'])} | {_pct(o['worst_abs_err'])} | "
                 f"{_pct(b['median_abs_err'])} | {_pct(b['worst_abs_err'])} |")
    lines += ["", "## Fitted parameters", "", "```", json.dumps(ev["params"], indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m calibration.h200", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a bound fails")
    ap.add_argument("--write", action="store_true", help=f"write {REPORT.relative_to(REPO)}")
    args = ap.parse_args(argv)
    ev = evaluate()
    text = markdown(ev)
    print(text)
    if args.write:
        REPORT.write_text(text, encoding="utf-8")
    bad = failures(ev)
    for b in bad:
        print(f"FAIL: {b}", file=sys.stderr)
    return 1 if bad and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
