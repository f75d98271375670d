"""Engine speed: wall time and peak memory to simulate N requests on one replica.

Workload: Poisson arrivals at 90% of the replica's saturated throughput (measured first by a
short burst run of the same workload, so the replica is busy but stable), lognormal prompts
(mean 1000, sigma 0.5, at most 6144) and outputs (mean 250, sigma 0.5, at most 2048: within
Llama 3's 8192 tokens), continuous batching with max_batch_size 256, llama-3-8b on h100-sxm.
Target: 1,000,000 requests in <= 60 s wall and <= 1 GB RSS with every output written
(--outputs) on one core; 100,000 in a tenth of that.

    python3 benchmarks/bench_engine.py --requests 1000000 --outputs /tmp/bench-out
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.serving.engine import simulate  # noqa: E402
from simulator.serving.scenario import Scenario  # noqa: E402


def scenario(n: int, rate: float | None, seed: int = 0) -> Scenario:
    arrival = {"process": "poisson", "rate": rate} if rate else {"process": "burst"}
    return Scenario.model_validate({
        "model": "llama-3-8b", "hardware": "h100-sxm", "seed": seed,
        "serving": {"scheduler": "continuous", "max_batch_size": 256},
        "workload": {"num_requests": n, "arrival": arrival,
                     "prompt_len": {"dist": "lognormal", "mean": 1000, "sigma": 0.5, "max": 6144},
                     "output_len": {"dist": "lognormal", "mean": 250, "sigma": 0.5, "max": 2048}},
    })


def saturated_rate(n: int = 4000) -> float:
    """Requests per second the replica completes with a full queue (a burst), in steady state:
    the middle half of completions, so the ramp-up and drain do not count."""
    r = simulate(scenario(n, None, seed=1))
    f = sorted(r.requests["finish_s"])
    lo, hi = n // 4, 3 * n // 4
    return (hi - lo) / (f[hi] - f[lo])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--load", type=float, default=0.9, help="arrival rate / saturated throughput")
    ap.add_argument("--rate", type=float, default=None, help="requests/s (skips the burst measurement)")
    ap.add_argument("--outputs", metavar="DIR", default=None,
                    help="also summarise and write every output (CSVs, plots, trace, report) to DIR, as run --out")
    a = ap.parse_args()
    rate = a.rate or a.load * saturated_rate()
    sc = scenario(a.requests, rate)
    t = time.perf_counter()
    r = simulate(sc)
    wall = time.perf_counter() - t
    sim_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if a.outputs:
        from simulator.reports.metrics import summarize
        from simulator.reports.run import write_outputs

        t_out = time.perf_counter()
        write_outputs(r, summarize(r), Path(a.outputs))
        print(f"outputs       {time.perf_counter() - t_out:.2f} s to summarise and write {a.outputs}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    moments = r.moments["start_s"].size
    done = int((r.requests["status"] == 0).sum())
    busy = float(r.moments["dur_s"].sum() / r.makespan_s)
    print(f"requests      {a.requests} ({done} completed, rejected {r.reject_reasons or 0})")
    print(f"arrival rate  {rate:.3f} req/s ({a.load:.0%} of saturated)" if not a.rate else f"arrival rate  {rate} req/s")
    print(f"simulated     {r.makespan_s:.1f} s, GPU busy {busy:.1%}, mean batch {r.moments['batch'].mean():.1f}")
    print(f"moments       {moments}  ({moments / wall:,.0f} moments/s)")
    print(f"requests/s    {a.requests / wall:,.0f} simulated requests per wall second")
    print(f"wall          {wall:.2f} s")
    print(f"peak RSS      {rss_mb:.0f} MB" + (f" ({sim_rss_mb:.0f} MB after simulating)" if a.outputs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
