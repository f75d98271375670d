"""Bit-identity guard for engine refactors: digest every array a run produces, compare later.

Runs every scenario under scenarios/ (not sweeps, plans or hardware parts) and a grid of small
synthetic runs that reach the engine's corners (tiny KV caches that force preemption by
recompute and by swap, prefix caching, pp virtual engines, several replicas and both routers,
a queue cap, all three schedulers), and digests each SimResult: every per-request, per-moment and
time-series array (dtype, shape and bytes: floats compared bit for bit), the category seconds,
the scalars, and each key of the `momentsim run --json` summary. Outputs a change adds (a new
metric, column or series) are listed as added, not as differences.

    python3 benchmarks/engine_golden.py --record /tmp/golden.json   # before the change
    python3 benchmarks/engine_golden.py --check /tmp/golden.json    # after: lists what differs

The digests belong to one version of the cost model and the workload generator, so they are not
committed: record them from the base commit in the same session as the check.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.moment.model import load_model  # noqa: E402
from simulator.reports.metrics import summarize  # noqa: E402
from simulator.serving.engine import simulate  # noqa: E402
from simulator.serving.scenario import Scenario, load_scenario  # noqa: E402

MODEL = "llama-3.2-1b"


def _array(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()[:16]


def digest(r) -> dict[str, str]:
    """One short hash per thing the run produced (names stay readable, so a diff says what moved)."""
    d = {f"requests.{k}": _array(v) for k, v in sorted(r.requests.items())}
    d.update({f"moments.{k}": _array(v) for k, v in sorted(r.moments.items())})
    d.update({f"timeseries.{k}": _array(v) for k, v in sorted(r.timeseries.items())})
    d["category_s"] = repr(sorted((k, sorted(v.items())) for k, v in r.category_s.items()))
    d["reject_reasons"] = repr(sorted(r.reject_reasons.items()))
    for k in ("makespan_s", "kv_capacity_blocks", "block_size", "replicas", "devices_per_replica", "clock_ghz",
              "peak_flops", "mem_bw", "total_flops", "total_bytes", "host_busy_s", "pp"):
        d[k] = repr(getattr(r, k))
    d["stats"] = repr(sorted(r.stats.items()))
    for key, value in summarize(r).items():  # one digest per key: a key a feature adds shows as added
        text = json.dumps(value, sort_keys=True).replace(str(ROOT), "ROOT")  # checkouts differ
        d[f"summary.{key}"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return d


def tiny_hw(folder: Path, kv_tokens: int, pp: int) -> str:
    """An H100 whose memory leaves about kv_tokens of llama-3.2-1b KV per replica (as tests/test_engine)."""
    m = load_model(MODEL)
    gb = (m.weight_bytes("bf16", 1, pp) + 1e9 + (kv_tokens + 0.5) * m.kv_bytes_per_token("bf16", 1, pp)) / 0.9 / 1e9
    p = folder / f"tiny-{kv_tokens}-{pp}.yaml"
    p.write_text(f"base: h100-sxm\nname: tiny-h100\ndevice:\n  memory_gb: {gb!r}\n")
    return str(p)


def synthetic(folder: Path):
    """(name, Scenario) pairs over the engine's corners; each runs in well under a second."""
    grid = itertools.product(["static", "continuous", "chunked"], ["recompute", "swap"], [False, True],
                             [1, 2], [1, 2])
    for k, (sched, mode, pc, pp, replicas) in enumerate(grid):
        kv = (600, 2500)[k % 2]
        wl = {"num_requests": 150, "arrival": {"process": "poisson", "rate": (40.0, 400.0)[k % 3 == 0]},
              "prompt_len": {"dist": "uniform", "low": 1, "high": 700},
              "output_len": {"dist": "lognormal", "mean": 60, "sigma": 1.0, "max": 900},
              "prefix": {"groups": 3, "length": 45, "fraction": 0.7}}
        sv = {"scheduler": sched, "max_batch_size": (5, 32)[k % 2], "max_batched_tokens": (256, 512)[k % 3 == 1],
              "block_size": (4, 16)[k % 2], "preemption": mode, "prefix_caching": pc, "replicas": replicas,
              "pp": pp, "router": ("round_robin", "least_outstanding")[k % 4 >= 2],
              "max_queue": 40 if k % 5 == 0 else None}
        name = f"{sched}-{mode}-pc{int(pc)}-pp{pp}-r{replicas}"
        yield name, Scenario.model_validate({"model": MODEL, "hardware": tiny_hw(folder, kv, pp), "seed": k,
                                             "serving": sv, "workload": wl})


def scenarios():
    for p in sorted((ROOT / "scenarios").glob("*.yaml")):
        head = p.read_text(encoding="utf-8")
        if "\nbase:" in "\n" + head or "\ngrid:" in "\n" + head or "candidates" in head:
            continue  # hardware parts, sweeps, plans
        yield p.name, load_scenario(p)


def run_all() -> dict[str, dict[str, str]]:
    out = {}
    hw = Path(tempfile.gettempdir()) / "engine-golden-hw"  # a fixed path: the summary names the hardware file
    hw.mkdir(exist_ok=True)
    for name, sc in itertools.chain(scenarios(), synthetic(hw)):
        out[name] = digest(simulate(sc))
        print(f"  {name}", file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--record", type=Path)
    g.add_argument("--check", type=Path)
    a = ap.parse_args()
    now = run_all()
    if a.record:
        a.record.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(now)} runs to {a.record}")
        return 0
    old = json.loads(a.check.read_text())
    bad = 0
    added: set[str] = set()
    new_runs = sorted(set(now) - set(old))
    if new_runs:  # a scenario file added since the record
        print(f"new runs (not in the record): {', '.join(new_runs)}")
    for name in sorted(set(old)):
        o, n = old.get(name, {}), now.get(name, {})
        diff = sorted(k for k in set(o) | set(n) if k in o and o.get(k) != n.get(k)) + (["(run missing)"] if not n else [])
        added |= set(n) - set(o)
        if diff:
            bad += 1
            print(f"DIFFERS {name}: {', '.join(diff)}")
    if added:  # outputs a change adds (a new metric or column) are not differences
        print(f"added (not in the record): {', '.join(sorted(added))}")
    print(f"{len(old) - bad} of {len(old)} recorded runs bit-identical" + ("" if bad else " (all)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
