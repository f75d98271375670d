"""Write the ShareGPT-like (prompt, output) length files of scenarios/published/ from a fixed seed.

The published runs used ShareGPT_V3 (the first human turn as the prompt, the first reply's
token count as the output length), filtered as `vllm bench serve` and `sglang.bench_serving`
do: both lengths >= 4, prompt <= 1024, prompt + output <= 2048. The rows state only the means
of what was sent, so everything else is ASSUMED and said here:

- shape: prompt and output lengths independent and lognormal before the filters. Outputs:
  the SGLang rows imply their median, as median E2E = median TTFT + (n - 1) x median TPOT for
  the median request: (1564.17 - 31.98) / 13.17 + 1 = 117 tokens at 4 req/s (R34) and
  (2175.02 - 35.68) / 17.85 + 1 = 121 at 8 req/s (R36); with their mean of 194 that is a
  median/mean of 0.61, and the output sigma is solved to give it (ShareGPT's shape, used for
  both files). Prompts: sigma 1.1 of the log (assumed: nothing states their spread);
- scale: the lognormals' medians are solved so that the filtered means are the targets;
- sharegpt-qwen3-chat.csv: 100 rows whose totals are exactly the GPUStack runs' (R43-R45:
  23,260 prompt tokens, chat template included, and 22,061 output tokens for 100 requests),
  so a 100-request scenario sends exactly their tokens;
- sharegpt-llama3.csv: 1,000 rows for SGLang's runs (R34, R36): output mean 194 (the row's
  "~194 tok/req"); the prompt mean is not stated and is taken as 220, the GPUStack mean less
  about 13 tokens of chat template (an assumption).

    python3 scenarios/published/lengths/make_sharegpt_like.py   # rewrites both files, same bytes
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIGMA_PROMPT = 1.1
OUTPUT_MEDIAN_OVER_MEAN = 119 / 194  # R34/R36: median output (E2E, TTFT and TPOT medians) over the mean
MIN_LEN, MAX_PROMPT, MAX_TOTAL = 4, 1024, 2048


def filtered(rng: np.random.Generator, med_p: float, med_o: float, sigma_o: float,
             n: int) -> tuple[np.ndarray, np.ndarray]:
    """n pairs that pass the benchmark clients' filters."""
    p, o = [], []
    while sum(len(x) for x in p) < n:
        a = np.rint(rng.lognormal(np.log(med_p), SIGMA_PROMPT, 4 * n)).astype(np.int64)
        b = np.rint(rng.lognormal(np.log(med_o), sigma_o, 4 * n)).astype(np.int64)
        ok = (a >= MIN_LEN) & (b >= MIN_LEN) & (a <= MAX_PROMPT) & (a + b <= MAX_TOTAL)
        p.append(a[ok])
        o.append(b[ok])
    return np.concatenate(p)[:n], np.concatenate(o)[:n]


def solve(mean_p: float, mean_o: float) -> tuple[float, float, float]:
    """Medians of the unfiltered lognormals and the output sigma whose filtered prompt and output
    means are the targets and whose output median is OUTPUT_MEDIAN_OVER_MEAN of the mean."""
    med_p, med_o, sigma_o = mean_p / 2, mean_o / 2, 1.0
    for _ in range(60):  # fixed-point iteration on the three: the filters couple them weakly
        p, o = filtered(np.random.default_rng(0), med_p, med_o, sigma_o, 200_000)
        med_p *= mean_p / p.mean()
        med_o *= mean_o / o.mean()
        sigma_o *= (np.median(o) / o.mean() / OUTPUT_MEDIAN_OVER_MEAN) ** 0.5
    return med_p, med_o, sigma_o


def exact_total(x: np.ndarray, total: int, hi: np.ndarray | None = None) -> np.ndarray:
    """x scaled to sum to `total` (largest remainders), each still >= MIN_LEN and <= hi."""
    y = x * total / x.sum()
    out = np.maximum(np.floor(y).astype(np.int64), MIN_LEN)
    if hi is not None:
        out = np.minimum(out, hi)
    order = np.argsort(-(y - np.floor(y)))
    i = 0
    while out.sum() != total:
        k = order[i % out.size]
        step = 1 if out.sum() < total else -1
        if (hi is None or out[k] + step <= hi[k]) and out[k] + step >= MIN_LEN:
            out[k] += step
        i += 1
    return out


def write(name: str, p: np.ndarray, o: np.ndarray) -> None:
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["prompt_len", "output_len"])
        w.writerows(zip(p.tolist(), o.tolist(), strict=True))
    print(f"{name}: {p.size} rows, prompt mean {p.mean():.1f} (p50 {np.median(p):.0f}, max {p.max()}), "
          f"output mean {o.mean():.1f} (p50 {np.median(o):.0f}, max {o.max()})")


def main() -> None:
    # label, (mean prompt, mean output) to solve for, rng seed, rows, (total prompt, total output) tokens, file
    for label, means, seed, rows, totals, name in (
            ("qwen3 chat", (232.6, 220.6), 1, 100, (23_260, 22_061), "sharegpt-qwen3-chat.csv"),
            ("llama3", (220.0, 194.0), 2, 1000, (220_000, 194_000), "sharegpt-llama3.csv")):
        med = solve(*means)
        print(f"{label}: prompt median {med[0]:.0f}, output median {med[1]:.0f}, output sigma {med[2]:.2f} "
              "(unfiltered)")
        p, o = filtered(np.random.default_rng(seed), *med, rows)
        p = exact_total(p, totals[0], np.full(p.size, MAX_PROMPT))
        o = exact_total(o, totals[1], MAX_TOTAL - p)
        write(name, p, o)


if __name__ == "__main__":
    main()
