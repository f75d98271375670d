"""The fast engine against a slow, obvious reference: the plain version is the source of truth.

The reference keeps one object per request (tokens computed, tokens generated, as vLLM's
computed-tokens model) and, every step, walks all of them: no decode set, no heaps, no running
sums, no SimPy. It implements each policy as its docstring states it, with enough KV that no
request waits for blocks, and costs each step with the same StepModel.step_agg. Every moment's
length and every request's first-token and finish times must then be equal to the last bit, and
the gaps between tokens that metrics.itl_samples derives from the moment log must be the
requests' own gaps.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest

from hwmodels.load import load_hardware
from simulator.moment.cost import step_model
from simulator.moment.model import load_model
from simulator.moment.ops import Dtypes
from simulator.reports.metrics import itl_samples
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario
from simulator.serving.workload import make_requests

MODEL = "llama-3.2-1b"


@dataclass
class Req:
    i: int
    arrival: float
    prompt: int
    output: int
    seen: float = 0.0   # when the engine's arrival process hands it over (see reference)
    computed: int = 0   # tokens with KV
    generated: int = 0
    first: float = float("nan")
    finish: float = float("nan")
    times: list = None  # when each of its tokens came out

    def __post_init__(self):
        self.times = []


def reference(sc: Scenario) -> tuple[list[float], list[Req]]:
    """Moment lengths and requests, one replica, KV never short."""
    sv = sc.serving
    cost = step_model(load_model(MODEL), load_hardware(sc.hardware), 1, 1, sv.mode, Dtypes()).step_agg
    q = make_requests(sc.workload, sc.seed)
    todo = [Req(i, float(a), int(p), int(o)) for i, (a, p, o) in
            enumerate(zip(q.arrival_s, q.prompt_len, q.output_len, strict=True))]
    clock = 0.0
    for r in todo:  # SimPy reaches an arrival as now + (arrival - now): the same float sum here
        if r.arrival > clock:
            clock += r.arrival - clock
        r.seen = clock
    maxb, mbt = sv.max_batch_size, sv.max_batched_tokens
    # continuous and mixed never split a prompt: one longer than the budget is rejected on arrival
    arriving = [r for r in todo if sv.scheduler not in ("continuous", "mixed") or r.prompt <= mbt]
    waiting, running, moments = [], [], []  # running: admission order
    if sv.scheduler in ("chunked", "mixed"):
        maxb = min(maxb, mbt)
    now = 0.0
    while arriving or waiting or running:
        while arriving and arriving[0].seen <= now:
            waiting.append(arriving.pop(0))
        decodes = [r for r in running if r.generated > 0]
        chunks: list[tuple[Req, int]] = []  # (request, new tokens)
        if sv.scheduler == "static":
            if not running:
                chunks = [(r, r.prompt) for r in waiting[:maxb]]
        elif sv.scheduler == "continuous":  # whole prompts within the budget first, else decode
            if waiting and len(running) < maxb:
                tokens = 0
                for r in waiting[:maxb - len(running)]:
                    if chunks and tokens + r.prompt > mbt:
                        break
                    chunks.append((r, r.prompt))
                    tokens += r.prompt
            if chunks:
                decodes = []
        else:  # chunked: every decode, then chunks of started prompts, then new prompts (mixed: whole ones);
            # prefill_first: the chunks alone, within the whole budget, if there are any
            first = sv.scheduler == "prefill_first"
            rest = mbt - (0 if first else len(decodes))
            for r in running:
                if r.generated == 0 and rest > 0:
                    chunks.append((r, min(r.prompt - r.computed, rest)))
                    rest -= chunks[-1][1]
            for r in waiting:
                if rest <= 0 or len(running) + sum(1 for c in chunks if c[0] in waiting) >= maxb:
                    break
                if sv.scheduler == "mixed" and r.prompt > rest:
                    break
                chunks.append((r, min(r.prompt, rest)))
                rest -= chunks[-1][1]
            if first and chunks:
                decodes = []
        for r, _ in chunks:
            if r in waiting:
                waiting.remove(r)
                running.append(r)
        if not decodes and not chunks:
            now = arriving[0].seen
            continue
        ends = sum(1 for r, n in chunks if r.computed + n == r.prompt)
        dt = cost(len(decodes), sum(r.computed for r in decodes), len(chunks), sum(n for _, n in chunks),
                  sum(n * r.computed + n * (n + 1) / 2 for r, n in chunks), sum(r.computed for r, _ in chunks),
                  len(decodes) + ends)
        now += dt
        moments.append(dt)
        for r in decodes:
            r.computed += 1
            r.generated += 1
            r.times.append(now)
        for r, n in chunks:
            r.computed += n
            if r.computed == r.prompt:
                r.generated, r.first = 1, now
                r.times.append(now)
        for r in [r for r in running if r.generated == r.output]:
            r.finish = now
            running.remove(r)
    return moments, todo


def scenario(sched: str, rate: float, seed: int, maxb: int, mbt: int) -> Scenario:
    return Scenario.model_validate({
        "model": MODEL, "hardware": "h100-sxm", "seed": seed,
        "serving": {"scheduler": sched, "max_batch_size": maxb, "max_batched_tokens": mbt},
        "workload": {"num_requests": 60, "arrival": {"process": "poisson", "rate": rate},
                     "prompt_len": {"dist": "uniform", "low": 1, "high": 300},
                     "output_len": {"dist": "uniform", "low": 2, "high": 40}}})  # 2: every request has a gap


@pytest.mark.parametrize("sched", ["static", "continuous", "chunked", "prefill_first", "mixed"])
@pytest.mark.parametrize("rate,seed,maxb,mbt", [(50.0, 0, 8, 512), (400.0, 1, 4, 300), (2000.0, 2, 16, 128)])
def test_engine_equals_the_plain_reference(sched, rate, seed, maxb, mbt):
    sc = scenario(sched, rate, seed, maxb, mbt)
    r = simulate(sc)
    moments, reqs = reference(sc)
    q = r.requests
    assert not q["preemptions"].any() and not r.reject_reasons.keys() - {"prompt > max_batched_tokens"}
    assert (q["status"] == 0).tolist() == [not math.isnan(x.finish) for x in reqs]
    assert r.moments["dur_s"].tolist() == moments
    np.testing.assert_array_equal(q["first_token_s"], [x.first for x in reqs])  # NaN: rejected
    np.testing.assert_array_equal(q["finish_s"], [x.finish for x in reqs])
    # the gaps between tokens derived from the moment log are every request's own gaps
    gaps, weights = itl_samples(r.moments)
    fast = np.sort(np.repeat(gaps, weights.astype(int)))
    slow = np.sort([b - a for x in reqs for a, b in zip(x.times, x.times[1:], strict=False)])
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
