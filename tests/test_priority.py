"""Request classes, priority queueing, preemption by priority and shortest-job-first: the queues
and the victim order on hand-built states, class draws against their shares, a trace's priority
column, and a high-priority class that meets its SLO under a load that breaks it under FCFS."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from simulator.reports.metrics import summarize
from simulator.serving.engine import simulate
from simulator.serving.queues import KeyedQueue, waiting_queue
from simulator.serving.result import RequestLog
from simulator.serving.scenario import Scenario, Serving, Workload
from simulator.serving.schedulers import PREFILL, scheduler_class
from simulator.serving.schedulers.priority import VictimHeap
from simulator.serving.workload import Requests, make_requests


def log_of(prompts: list[int], outputs: list[int], priority: list[int]) -> RequestLog:
    n = len(prompts)
    return RequestLog(Requests(np.zeros(n), np.array(prompts), np.array(outputs), np.full(n, -1),
                               np.zeros(n, dtype=np.int64), np.array(priority)))


def test_keyed_queue_serves_the_smallest_key_then_arrival_order():
    q = KeyedQueue([1, 0, 1, 0, 2])
    for i in range(5):
        q.append(i)
    assert [q.popleft() for _ in range(5)] == [1, 3, 0, 2, 4]
    q.append(2)
    q.appendleft(0)  # a preempted request goes back by its key: ahead of 2 only by arrival
    assert (q[0], len(q)) == (0, 2)


def test_shortest_first_orders_by_prompt_plus_output():
    log = log_of([100, 10, 50], [100, 5, 10], [0, 0, 0])
    q = waiting_queue("shortest_first", log)
    for i in range(3):
        q.append(i)
    assert [q.popleft() for _ in range(3)] == [1, 2, 0]
    assert list(waiting_queue("fcfs", log)) == []


def test_victims_go_lowest_priority_first_then_newest():
    h = VictimHeap([0, 2, 2, 1])
    for token, i in ((1, 0), (2, 1), (3, 2), (4, 3)):
        h.append((token, i))
    assert [h.pop() for _ in range(4)] == [(3, 2), (2, 1), (4, 3), (1, 0)]


def test_a_high_priority_arrival_preempts_the_newest_low_priority_request():
    # two low-priority requests fill a batch of 2; a priority-0 request arrives: the next schedule
    # preempts the newest low-priority one (request 1) and runs the newcomer's prefill
    log = log_of([100, 100, 100], [50, 50, 50], [1, 1, 0])
    sv = Serving(scheduler="continuous", max_batch_size=2, queue="priority", priority_preemption=True)
    s = scheduler_class(sv)(sv, log, 100, 1e-3)
    s.add(0)
    s.add(1)
    m = s.schedule()
    assert m.kind == PREFILL and m.batch[2] == 2
    s.on_step_done(m, 1.0)
    assert s.decode.seqs == 2
    s.add(2)
    m = s.schedule()
    assert (m.kind, m.batch[2], m.batch[3]) == (PREFILL, 1, 100)  # request 2's whole prompt
    assert log.preemptions.tolist() == [0, 1, 0] and s.decode.seqs == 1
    assert s.waiting[0] == 1  # waiting again, by its priority
    # without priority preemption the newcomer waits for a seat
    plain = Serving(scheduler="continuous", max_batch_size=2, queue="priority")
    log = log_of([100, 100, 100], [50, 50, 50], [1, 1, 0])
    s = scheduler_class(plain)(plain, log, 100, 1e-3)
    s.add(0)
    s.add(1)
    s.on_step_done(s.schedule(), 1.0)
    s.add(2)
    assert s.schedule().batch[0] == 2 and log.preemptions.sum() == 0  # a decode step of the two


def test_equal_priorities_never_preempt_each_other():
    log = log_of([100, 100, 100], [50, 50, 50], [0, 0, 0])
    sv = Serving(scheduler="chunked", max_batch_size=2, queue="priority", priority_preemption=True)
    s = scheduler_class(sv)(sv, log, 100, 1e-3)
    for i in range(3):
        s.add(i)
    for t in range(5):
        s.on_step_done(s.schedule(), float(t))
    assert log.preemptions.sum() == 0 and s.waiting[0] == 2


def classes(**kw: Any) -> dict[str, Any]:
    return {"classes": [{"name": "interactive", "share": 0.2, "priority": 0,
                         "output_len": {"dist": "fixed", "value": 7}, "slo": {"ttft_ms": 500}},
                        {"name": "batch", "share": 0.8, "priority": 1}], **kw}


def test_classes_are_drawn_by_share_with_their_own_lengths():
    wl = Workload.model_validate({"num_requests": 20000, "output_len": {"dist": "fixed", "value": 300}, **classes()})
    r = make_requests(wl, seed=0)
    inter = r.klass == 0
    assert r.class_names == ("interactive", "batch")
    # binomial: 20000 x 0.2 = 4000 +- 57 (one sigma)
    assert abs(int(inter.sum()) - 4000) < 4 * np.sqrt(20000 * 0.2 * 0.8)
    assert set(r.output_len[inter].tolist()) == {7} and set(r.output_len[~inter].tolist()) == {300}
    assert set(r.priority[inter].tolist()) == {0} and set(r.priority[~inter].tolist()) == {1}
    # without classes nothing is drawn for them: the same requests as before classes existed
    plain = make_requests(Workload(num_requests=50, output_len={"dist": "uniform", "low": 1, "high": 9}), seed=4)
    assert not plain.priority.any() and plain.class_names == ("all",)


def test_class_shares_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        Workload.model_validate({"classes": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]})
    with pytest.raises(ValueError, match="queue: priority"):
        Serving(priority_preemption=True)
    # TensorRT-LLM's guaranteed_no_evict reserves every request's whole output and never evicts;
    # preempting for priority beside it left the evicted request's reservation held (a crash at
    # the end of the run), so the two are refused together, also under a stack that sets it
    with pytest.raises(ValueError, match="guaranteed_no_evict never does"):
        Serving(queue="priority", priority_preemption=True, guaranteed_no_evict=True)
    from hwmodels.errors import InputError
    from simulator.serving.engine import check_scenario

    with pytest.raises(InputError, match=r"serving.stack trtllm\): .*guaranteed_no_evict never does"):
        check_scenario(Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", "serving": {
            "stack": "trtllm", "queue": "priority", "priority_preemption": True}}))


def test_a_trace_priority_column_makes_a_class_per_level(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_len,output_len,priority\n0,10,2,3\n0.1,10,2,0\n0.2,10,2,3\n")
    sc = Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm",
                                  "serving": {"queue": "priority"},
                                  "workload": {"arrival": {"process": "trace", "path": str(p)},
                                               "prompt_len": {"dist": "trace"}, "output_len": {"dist": "trace"}}})
    r = simulate(sc)
    assert r.class_names == ("priority 0", "priority 3")
    assert r.requests["class"].tolist() == [1, 0, 1] and r.requests["priority"].tolist() == [3, 0, 3]
    s = summarize(r)
    assert s["classes"]["priority 3"]["requests"] == 2 and s["classes"]["priority 0"]["priority"] == 0


def overloaded(queue: str, preempt: bool) -> dict[str, Any]:
    """20 % interactive requests (priority 0, 7 output tokens, TTFT SLO 500 ms) among long batch
    jobs, at about 1.5x what one H100 replica of Llama 3.2 1B serves with a batch of 32."""
    sc = Scenario.model_validate({
        "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 1,
        "serving": {"scheduler": "continuous", "max_batch_size": 32, "queue": queue, "priority_preemption": preempt},
        "workload": {"num_requests": 2000, "arrival": {"process": "poisson", "rate": 45.0},
                     "prompt_len": {"dist": "lognormal", "mean": 1500, "sigma": 0.5, "max": 8000},
                     "output_len": {"dist": "lognormal", "mean": 300, "sigma": 0.5}, **classes()}})
    return summarize(simulate(sc))


def test_priority_keeps_the_interactive_class_within_its_slo_where_fcfs_breaks_it():
    fcfs = overloaded("fcfs", False)
    assert fcfs["overloaded"]  # the queue grows: under FCFS everyone waits in it
    assert fcfs["classes"]["interactive"]["ttft_ms"]["p99"] > 2000
    assert fcfs["classes"]["interactive"]["goodput"]["fraction"] < 0.5
    inter = {preempt: overloaded("priority", preempt)["classes"]["interactive"] for preempt in (False, True)}
    for s in inter.values():
        assert s["completed"] == s["requests"]
        assert s["ttft_ms"]["p99"] < 500 and s["goodput"]["fraction"] == 1.0
    # preempting the batch class for a seat cuts the interactive wait further
    assert inter[True]["ttft_ms"]["p99"] < inter[False]["ttft_ms"]["p99"]


def test_every_request_completes_with_its_tokens_under_priority_preemption(tmp_path):
    # a tiny KV cache (forces KV-pressure preemption too) and swap: nothing is lost
    for mode in ("recompute", "swap"):
        sc = Scenario.model_validate({
            "model": "llama-3.2-1b", "hardware": "h100-sxm", "seed": 5,
            "serving": {"scheduler": "chunked", "max_batch_size": 8, "max_batched_tokens": 512, "queue": "priority",
                        "priority_preemption": True, "preemption": mode, "gpu_memory_utilization": 0.045},
            "workload": {"num_requests": 300, "arrival": {"process": "poisson", "rate": 200.0},
                         "prompt_len": {"dist": "uniform", "low": 10, "high": 900},
                         "output_len": {"dist": "uniform", "low": 1, "high": 200}, **classes()}})
        r = simulate(sc)
        q = r.requests
        assert (q["status"] == 0).all()
        assert r.requests["preemptions"].sum() > 0
        assert np.all(q["first_token_s"] <= q["finish_s"])
