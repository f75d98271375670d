"""Serving settings in combination: any mix the schema accepts runs to the end and conserves.

Each example draws a mix of scheduler, preemption, prefix caching, TensorRT-LLM's
guaranteed_no_evict, priority queueing and preemption, pipeline stages, multi-step and async
scheduling, a small or large KV cache, CPU offload, speculative decoding, disaggregated pools,
replicas, stacks, block sizes and eager mode, on a workload with shared prefixes and two priority
classes. A mix the schema or check_scenario refuses is skipped (refusing is an answer); any other
must: end (simulate itself checks that every KV block came back), complete or reject every
request, keep every token's times in order, and never hold more KV blocks than a pool has.
Two bugs this found: guaranteed_no_evict on a disaggregated decode pool, and beside priority
preemption (both ended "holding KV blocks")."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hwmodels.errors import InputError
from simulator.serving.engine import check_scenario, simulate
from simulator.serving.scenario import Scenario

SERVING = st.fixed_dictionaries({
    "scheduler": st.sampled_from(["static", "continuous", "chunked", "prefill_first", "mixed"]),
    "preemption": st.sampled_from(["recompute", "swap"]),
    "prefix_caching": st.booleans(),
    "guaranteed_no_evict": st.booleans(),
    "queue": st.sampled_from(["fcfs", "priority"]),
    "priority_preemption": st.booleans(),
    "pp": st.sampled_from([1, 2]),
    "num_scheduler_steps": st.sampled_from([1, 4]),
    "async_scheduling": st.booleans(),
    "max_batch_size": st.sampled_from([4, 64]),
    "max_batched_tokens": st.sampled_from([512, 4096]),
    "gpu_memory_utilization": st.sampled_from([0.06, 0.3]),
    "replicas": st.sampled_from([1, 2]),
    "block_size": st.sampled_from([16, 32]),
    "mode": st.sampled_from(["graph", "eager"]),
}, optional={
    "kv_offload": st.just({"cpu_gb": 4}),
    "speculative": st.just({"method": "heads", "k": 2, "acceptance": 0.6}),
    "disaggregated": st.just({}),
    "stack": st.sampled_from(["vllm-v1", "sglang", "trtllm"]),
})


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(serving=SERVING, seed=st.integers(0, 1000))
def test_every_accepted_mix_of_settings_runs_and_conserves(serving, seed):
    workload = {"num_requests": 40, "arrival": {"process": "poisson", "rate": 30.0},
                "prompt_len": {"dist": "uniform", "low": 200, "high": 3000},
                "output_len": {"dist": "uniform", "low": 2, "high": 200},
                "prefix": {"groups": 3, "length": 256, "fraction": 0.5},
                "classes": [{"name": "a", "share": 0.3, "priority": 0}, {"name": "b", "share": 0.7, "priority": 2}]}
    try:
        sc = Scenario.model_validate({"model": "llama-3.2-1b", "hardware": "h100-sxm", "serving": serving,
                                      "workload": workload, "seed": seed})
        check_scenario(sc)
    except (ValidationError, InputError):
        assume(False)
    r = simulate(sc)
    q, m = r.requests, r.moments
    done = q["status"] == 0
    assert np.isin(q["status"], [0, 1]).all()
    assert (q["first_token_s"][done] >= q["arrival_s"][done]).all()
    assert (q["finish_s"][done] >= q["first_token_s"][done]).all()
    caps = [p["kv_capacity_blocks"] for p in r.pools] if r.pools else [r.kv_capacity_blocks]
    for k, cap in enumerate(caps):
        used = m["kv_blocks_used"][m["pool"] == k] if r.pools else m["kv_blocks_used"]
        assert used.size == 0 or (used.min() >= 0 and used.max() <= cap)
