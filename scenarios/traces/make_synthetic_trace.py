"""Write scenarios/traces/synthetic-azure-conv.csv: a SYNTHETIC trace in the layout of the
Azure LLM inference traces (TIMESTAMP,ContextTokens,GeneratedTokens).

It is not real Azure data: every row is drawn here from a fixed seed. The shape imitates a
conversation service: bursty arrivals (gamma gaps with a coefficient of variation of 2) whose
rate swings +-60% over the 5 minutes, heavy-tailed prompt lengths (lognormal, median ~1k
tokens) and replies (lognormal, median ~200 tokens). Rerun it to get the same bytes:

    python scenarios/traces/make_synthetic_trace.py [OUT.csv]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROWS = 800
SECONDS = 300.0
START = np.datetime64("2023-11-16T18:00:00.0000000", "ns")


def make(rows: int = ROWS, seed: int = 2023) -> list[tuple[str, int, int]]:
    """The rows of the trace: (timestamp as the Azure files write it, prompt, reply tokens)."""
    rng = np.random.default_rng(seed)
    cv = 2.0
    k = 1.0 / cv**2
    gaps = rng.gamma(k, 1.0 / k, size=rows)  # mean 1: rescaled to the span below
    t = np.cumsum(gaps)
    t = t / t[-1] * SECONDS
    # a slow swing of the rate: warp time so that the middle is busier than the ends
    warp = t + 0.6 * SECONDS / (2 * np.pi) * np.sin(2 * np.pi * t / SECONDS)
    ctx = np.clip(np.rint(rng.lognormal(np.log(1000), 0.9, size=rows)), 8, 16000).astype(int)
    gen = np.clip(np.rint(rng.lognormal(np.log(200), 0.8, size=rows)), 1, 2000).astype(int)
    stamps = START + np.rint(warp * 1e9).astype("timedelta64[ns]")
    out = []
    for s, c, g in zip(stamps, ctx, gen, strict=True):
        text = str(s).replace("T", " ")[:27]  # 2023-11-16 18:15:46.6805900 (100 ns digits)
        out.append((text, int(c), int(g)))
    return out


def write(path: Path) -> None:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"{s},{c},{g}" for s, c, g in make()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("synthetic-azure-conv.csv"))
