"""Host memory of a run: bytes per request and per moment, the numbers behind
simulator/serving/budget.py.

Three runs, each in a fresh process (peak RSS is per process), each simulating, summarising and
writing every output as `momentsim run --out` does:
  base      1,000 one-token requests (the interpreter, libraries and step tables);
  moments   1,000 requests of 2,000 output tokens at batch 1 (2M moments, few requests);
  requests  N one-token requests of 1,000-token prompts (prompt lengths above 256 are Python
            int objects of their own, as in real workloads; N / 8 prefill moments).
bytes per moment = (moments - base) / 2M; bytes per request = (requests - base - its moments x
bytes per moment) / N.

    python3 benchmarks/bench_memory.py [--requests 1000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, tempfile
from pathlib import Path
from simulator.reports.metrics import summarize
from simulator.reports.run import write_outputs
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario

n, prompt, out_len, batch = (int(x) for x in sys.argv[1:5])
sc = Scenario.model_validate({
    "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 0,
    "serving": {"scheduler": "continuous", "max_batch_size": batch},
    "workload": {"num_requests": n, "arrival": {"process": "burst"},
                 "prompt_len": {"dist": "fixed", "value": prompt}, "output_len": {"dist": "fixed", "value": out_len}}})
r = simulate(sc)
with tempfile.TemporaryDirectory() as d:
    write_outputs(r, summarize(r), Path(d))
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "moments": int(r.moments["start_s"].size), "requests": n}))
"""


def measure(n: int, prompt: int, out_len: int, batch: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, str(n), str(prompt), str(out_len), str(batch)], capture_output=True,
                       text=True, check=True, cwd=tempfile.gettempdir(), env={"PYTHONPATH": str(ROOT)})
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    a = ap.parse_args()
    base = measure(1000, 16, 1, 256)
    mom = measure(1000, 16, 2000, 1)
    req = measure(a.requests, 1000, 1, 256)
    per_mom = (mom["rss"] - base["rss"]) / (mom["moments"] - base["moments"])
    per_req = (req["rss"] - base["rss"] - per_mom * req["moments"]) / (req["requests"] - base["requests"])
    print(f"base          {base['rss'] / 1e6:.0f} MB ({base['moments']:,} moments)")
    print(f"requests      {req['rss'] / 1e6:.0f} MB for {req['requests']:,} requests ({req['moments']:,} moments)")
    print(f"moments       {mom['rss'] / 1e6:.0f} MB for {mom['moments']:,} moments")
    print(f"per request   {per_req:.0f} bytes")
    print(f"per moment    {per_mom:.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
