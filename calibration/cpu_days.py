"""Every committed calibration of this 2-core CPU against every committed validation of it.

A CPU VM's speed moves from day to day; this table shows by how much a profile of one day misses
the cases measured on another (the diagonal: measured the same day), and is how the default
profile (`calibration/profiles/cpu-2core.json`) was chosen: the one that predicts the days it was
not measured on best. No torch, no device: `python -m calibration.cpu_days` prints the README's
table from the files below.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from calibration.validate import predict_case
from hwmodels.load import load_hardware

DATA = Path(__file__).parent / "data"
# (label, profile) in the order of their days; the last is the default's source
PROFILES = (
    ("2026-11-25", DATA / "cpu-2026-11-25" / "profile.json"),
    ("2026-11-30", DATA / "cpu-2026-11-30" / "profile.json"),
    ("2026-12-01, disturbed", DATA / "cpu-2026-12-01" / "profile.json"),
    ("2026-12-01 wide", DATA / "cpu-2026-12-01-wide" / "profile.json"),
    ("2026-12-01, the default", DATA / "cpu-2026-12-01-bf16" / "profile.json"),
)
VALIDATIONS = (
    ("11-25 cases", DATA / "cpu-2026-11-25" / "validation.json"),
    ("11-30", DATA / "cpu-2026-11-30" / "validation.json"),
    ("12-01 (VM at half speed)", DATA / "cpu-2026-12-01" / "validation-fp32.json"),
    ("12-01", DATA / "cpu-2026-12-01-bf16" / "validation-fp32.json"),
    ("12-01 wide, 03:08", DATA / "cpu-2026-12-01-wide" / "validation-repeat.json"),
    ("12-01 wide, 03:16", DATA / "cpu-2026-12-01-wide" / "validation.json"),
)
SAME_DAY = {(0, 0), (1, 1), (2, 2), (3, 4), (3, 5), (4, 3)}
FAMILIES = ("decode_step", "generation", "prefill")


def medians(profile: Path, validation: Path) -> tuple[float, ...]:
    """Median absolute error (%) of each whole-step family of `validation` predicted with `profile`."""
    hw = load_hardware(str(profile))
    saved = json.loads(validation.read_text(encoding="utf-8"))
    dtype = saved["meta"].get("dtype")
    errs: dict[str, list[float]] = {f: [] for f in FAMILIES}
    for c in saved["cases"]:
        if c["family"] in errs:
            errs[c["family"]].append(abs(predict_case(c, hw, "cpu", dtype) / c["measured_ms"] - 1))
    return tuple(100 * float(np.median(errs[f])) for f in FAMILIES)


def probe(profile: Path) -> float:
    return float(json.loads(profile.read_text(encoding="utf-8"))["fit"]["facts"]["probe"]["gflops"]["fp32"])


def table() -> list[str]:
    """The markdown table: a row per profile (with its probe), a cell per validation, each cell
    decode steps / generations / prefills, bold where profile and cases are of the same run."""
    lines = ["| profile (probe fp32 GFLOP/s) | " + " | ".join(v for v, _ in VALIDATIONS) + " |",
             "|---|" + "---|" * len(VALIDATIONS)]
    for i, (name, prof) in enumerate(PROFILES):
        label = f"{name} ({probe(prof):.0f})"
        if i == len(PROFILES) - 1:
            label = f"**{label}**"
        cells = []
        for j, (_, val) in enumerate(VALIDATIONS):
            cell = " / ".join(f"{x:.0f}" for x in medians(prof, val))
            cells.append(f"**{cell}**" if (i, j) in SAME_DAY else cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    print("\n".join(table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
