"""The 18 published runs of real servers (calibration/data/serving-public), each expressed as a
scenario under scenarios/published/, predicted and compared with what was measured.

Bounds, and why these:
- median |error| over the rows: throughput (output tokens/s, requests/s, batch latency) 10 %,
  TTFT 15 %, TPOT 15 % (the issue's goals), ITL and E2E 15 %;
- every single statistic within 25 %, except the p99 TTFT of the 100-request runs (R43-R45),
  which is the largest or second-largest of 100 TTFTs: one request's outlier (R45's p99 is 3x
  its median) is not a property of the server a model can be held to; they are reported, not
  bounded. 25 % leaves room for the one row the device model misses most (R06, decode at batch
  ~220 and 1-2k tokens of context, +20 %) while catching a broken stack preset, which moves
  whole groups by 30-80 % (a front end missing from TTFT, overheads missing from TPOT).
- In-sample: the overheads were fitted to some of these statistics (calibration.serving_public
  FIT: R34/R36 TPOT, R52, R43 TPOT, TTFT of R34/R36/R43/R44/R45); every other statistic is
  predicted (the throughput rows, p99s, ITLs, E2Es, R44/R45 TPOT and the closed loops' rates).

Speed: the 128/128 offline rows (R01-R05, R11) run 10,000 of their 30,000 requests: 5 waves of
2,048 instead of 15, which moves their throughput by 0.3 % at most (measured: R01 -0.2 %, R11
-0.1 %); every other row runs its published request count. About 5 s of CPU in all.
"""

from __future__ import annotations

import numpy as np
import pytest

from calibration.serving_public import STATISTICS, measurements, medians, run, scenario_files

SCALED = {rid: ["workload.num_requests=10000"] for rid in ("R01", "R02", "R03", "R04", "R05", "R11")}
GOALS = {"throughput": 0.10, "ttft": 0.15, "tpot": 0.15, "itl": 0.15, "e2e": 0.15}
EACH = 0.25
UNBOUNDED = {"p99_ttft_ms"}  # reported only: one request of 100 (see above)


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return run(sets=SCALED)


def test_every_row_has_a_scenario_and_every_statistic_a_mapping():
    rows = measurements()
    assert len(rows) == 18 and set(scenario_files()) == set(rows)
    for r in rows.values():
        assert set(r["results"]) - {"p99_latency_ms"} <= set(STATISTICS), r["id"]


def test_median_errors_meet_the_goals(results):
    med = medians([r for r in results if r["statistic"] not in UNBOUNDED])
    for group, goal in GOALS.items():
        assert med[group] <= goal, f"{group}: median |error| {med[group]:.1%} > {goal:.0%}"


def test_every_statistic_within_25_percent(results):
    bad = [f"{r['id']} {r['statistic']}: {r['error']:+.1%}" for r in results
           if r["statistic"] not in UNBOUNDED and abs(r["error"]) > EACH]
    assert not bad, "; ".join(bad)


def test_each_stack_is_close_on_latency(results):
    """Per stack the TTFT and TPOT medians, so no stack hides behind the others."""
    files = scenario_files()
    from simulator.serving.scenario import load_scenario

    by: dict[tuple[str, str], list[float]] = {}
    for r in results:
        if r["group"] in ("ttft", "tpot") and r["statistic"] not in UNBOUNDED:
            stack = load_scenario(files[r["id"]]).serving.stack
            by.setdefault((stack, r["group"]), []).append(abs(r["error"]))
    assert {s for s, _ in by} == {"sglang-v0.3", "vllm-v1", "sglang", "trtllm"}
    for (stack, group), errs in by.items():
        assert float(np.median(errs)) <= 0.15, (stack, group, errs)
