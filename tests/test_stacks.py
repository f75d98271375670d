"""Serving-stack presets: each default with its source, computed from the GPU's memory, tp and the
model's context as the stacks compute them (numbers read in calibration/data/serving-stacks.md),
and any field the scenario sets wins."""

import re
from pathlib import Path

import pytest

from hwmodels.load import load_hardware
from simulator.moment.model import load_model
from simulator.serving.engine import effective
from simulator.serving.scenario import STACK_NAMES, Serving, scenario_from_dict
from simulator.serving.stacks import PRESETS, describe, resolve

DOC = (Path(__file__).resolve().parent.parent / "calibration" / "data" / "serving-stacks.md").read_text()
H100, A100, L40S, H200, B200 = (load_hardware(h) for h in ("h100-sxm", "a100-sxm-80gb", "l40s", "h200-sxm", "b200"))
LLAMA31, LLAMA3 = load_model("llama-3.1-8b"), load_model("llama-3-8b")


def sv(hw=H100, model=LLAMA31, **fields) -> Serving:
    return resolve(Serving.model_validate(fields), hw, model)


def test_every_default_names_a_source_in_the_stacks_document():
    keys = set(re.findall(r"^- \[([A-Za-z0-9-]+)\]", DOC, flags=re.M))
    assert {"V063", "V085", "V033", "S040", "S0523", "TRT-args10", "BLOG060", "BLOGSGL04"} <= keys
    for name, st in PRESETS.items():
        assert set(st.sources) >= set(st.defaults), name
        for field, src in st.sources.items():
            cited = set(re.findall(r"\[([A-Za-z0-9-]+)\]", src))
            assert cited <= keys, (name, field, cited - keys)
            assert cited or "inferred" in src or "estimate" in src or field in ("kernels", "overheads"), (name, field)


@pytest.mark.parametrize("name", STACK_NAMES)
@pytest.mark.parametrize("hw", [H100, A100, L40S, H200, B200], ids=lambda h: h.name)
def test_every_preset_resolves_everywhere(name, hw):
    s = sv(hw, stack=name)
    assert s.stack == name and s.kernels == "fused" and s.mode == "graph"
    assert s.cuda_graph_sizes is None or s.cuda_graph_sizes == sorted(set(s.cuda_graph_sizes))
    assert describe(name, hw, LLAMA31)["max_batch_size"]["source"]


def test_vllm_v0_defaults_and_its_automatic_chunked_prefill():
    # [V063]: 256 sequences, blocks of 16, 0.9 of memory, prefix caching off; chunked prefill turns
    # itself on above a 32k context with a 512-token budget, else the budget is max(len, 2048)
    long = sv(stack="vllm-v0")  # Llama 3.1: 131072 tokens of context
    assert (long.scheduler, long.max_batched_tokens) == ("chunked", 512)
    short = sv(stack="vllm-v0", max_model_len=4096)
    assert (short.scheduler, short.max_batched_tokens, short.max_batch_size) == ("continuous", 4096, 256)
    assert sv(stack="vllm-v0", max_model_len=1024).max_batched_tokens == 2048
    assert (short.block_size, short.gpu_memory_utilization, short.prefix_caching) == (16, 0.9, False)
    # graphs [1, 2, 4] + multiples of 8 up to max_num_seqs: 3 + 32 sizes
    assert short.cuda_graph_sizes == [1, 2, 4] + list(range(8, 257, 8))
    assert sv(stack="vllm-v0", max_model_len=4096, max_batch_size=100).cuda_graph_sizes[-1] == 104


def test_vllm_v1_tiers_by_gpu_memory_and_usage_context():
    # [V085]: >= 70 GiB: 1024 sequences and 8192 tokens (API server) or 16384 (LLM class); else 256 / 2048
    assert (sv(stack="vllm-v1").max_batch_size, sv(stack="vllm-v1").max_batched_tokens) == (1024, 8192)
    assert sv(stack="vllm-v1", api_server=False).max_batched_tokens == 16384
    assert (sv(L40S, stack="vllm-v1").max_batch_size, sv(L40S, stack="vllm-v1").max_batched_tokens) == (256, 2048)
    # [V033]: the A100 stays in the lower tier; >= 160 GiB gets 16384 tokens
    a100 = sv(A100, stack="vllm")
    assert (a100.max_batch_size, a100.max_batched_tokens, a100.gpu_memory_utilization) == (256, 2048, 0.92)
    assert sv(B200, stack="vllm").max_batched_tokens == 16384
    assert sv(stack="vllm").async_scheduling and not sv(stack="vllm-v1").async_scheduling


def test_vllm_graph_sizes_as_the_document_works_them_out():
    # "Example (inferred): H100 API server defaults give M=512 and 51 sizes"
    g = sv(stack="vllm").cuda_graph_sizes
    assert len(g) == 51 and g[:4] == [1, 2, 4, 8] and g[-2:] == [496, 512]
    # 0.8.5: [1,2,4] + multiples of 8 up to 512, at most max_num_batched_tokens
    assert sv(stack="vllm-v1").cuda_graph_sizes == [1, 2, 4] + list(range(8, 513, 8))
    assert sv(L40S, stack="vllm-v1", max_batched_tokens=100).cuda_graph_sizes[-1] == 96


def test_sglang_tiers_and_graphs():
    # [S040]: chunk 8192 from 25,000 MB up, mem fraction 0.88 at tp 1, 0.85 at tp 4; graphs to 160
    s = sv(stack="sglang-v0.4")
    assert (s.scheduler, s.max_batched_tokens, s.gpu_memory_utilization, s.block_size) == ("prefill_first", 8192,
                                                                                            0.88, 1)
    assert sv(load_hardware("l4"), stack="sglang-v0.4").max_batched_tokens == 2048
    assert s.cuda_graph_sizes == [1, 2, 4] + list(range(8, 161, 8)) and s.async_scheduling
    assert not sv(stack="sglang-v0.3").async_scheduling
    # [S0523]: chunk 4096 below 60 GB, 16384 from 160 GB; decode graphs to 256 on an H100
    assert (sv(L40S, stack="sglang").max_batched_tokens, sv(B200, stack="sglang").max_batched_tokens) == (4096, 16384)
    g = sv(stack="sglang").cuda_graph_sizes
    assert g[:6] == [1, 2, 4, 8, 12, 16] and g[-1] == 256 and len(g) == 5 + 31


def test_trtllm_defaults():
    t = sv(stack="trtllm")
    assert (t.scheduler, t.max_batch_size, t.max_batched_tokens, t.block_size) == ("mixed", 2048, 8192, 32)
    assert t.guaranteed_no_evict and t.memory_fraction_of == "free" and t.async_scheduling
    assert t.cuda_graph_sizes == list(range(1, 33)) + [64, 128] and not t.cuda_graph_padding
    assert sv(stack="trtllm-v0").cuda_graph_sizes is None and not sv(stack="trtllm-v0").async_scheduling


def test_fields_set_in_the_file_win_field_by_field():
    s = sv(stack="vllm-v1", max_batch_size=7, overheads={"step_us": 1.0})
    assert s.max_batch_size == 7 and s.max_batched_tokens == 8192  # the rest is the preset's
    assert s.overheads.step_us == 1.0 and s.overheads.request_in_ms == PRESETS["vllm-v1"].defaults["overheads"][
        "request_in_ms"]
    assert sv(stack="vllm-v1", cuda_graph_sizes=[1, 2]).cuda_graph_sizes == [1, 2]


def test_a_scenario_runs_as_its_stack_resolves_it():
    sc = scenario_from_dict({"model": "llama-3.2-1b", "hardware": "h100-sxm",
                             "serving": {"stack": "sglang", "max_batch_size": 32}}, "x")
    eff, *_ = effective(sc)
    assert eff.serving.scheduler == "prefill_first" and eff.serving.max_batch_size == 32
    assert sc.serving.scheduler == "continuous"  # the file's own object is not changed


def test_no_stack_changes_nothing():
    s = Serving(scheduler="chunked", max_batch_size=3)
    assert resolve(s, H100, LLAMA3) is s


def test_stack_command_and_bad_stack_are_one_line(capsys, tmp_path):
    import json

    from simulator.cli import main

    assert main(["stack", "vllm", "--hardware", "a100-sxm-80gb", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["defaults"]["max_batch_size"] == {"value": 256, "source": PRESETS["vllm"].sources["max_batch_size"]}
    assert main(["stack", "tgi"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    f = tmp_path / "s.yaml"
    f.write_text("model: llama-3.2-1b\nhardware: h100-sxm\nserving: {stack: vllm-v9}\n")
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "serving.stack" in err and "vllm-v0" in err


def test_the_serving_fields_become_the_cost_models_launch_by_hand(tmp_path):
    """engine.launch: no stack, no graph sizes, no stack overheads and one scheduler step: no
    Launch (a graph step is one launch plus the hardware's step overhead). Any of them set: each
    field taken as written, the stack's host times on a host of speed s divided by s, a missing
    step time the hardware's own step overhead."""
    from hwmodels.load import load_hardware
    from simulator.moment.cost import Launch
    from simulator.serving.engine import launch
    from simulator.serving.scenario import Serving

    hw = load_hardware("h100-sxm")
    assert launch(Serving(), hw) is None
    fast = hw.model_copy(update={"host": hw.host.model_copy(update={"speed": 2.0})})
    sv = Serving.model_validate({"cuda_graph_sizes": [4, 1, 2], "cuda_graph_padding": False, "graph_mixed": True,
                                 "graph_piecewise": True, "num_scheduler_steps": 3,
                                 "overheads": {"step_us": 500.0, "step_seq_us": 8.0}})
    assert launch(sv, fast) == Launch((4, 1, 2), False, True, True, 250e-6, 4e-6, 3)
    assert launch(sv, hw) == Launch((4, 1, 2), False, True, True, 500e-6, 8e-6, 3)
    # each one alone is enough; without step_us the hardware's step overhead stands
    step = hw.host.step_overhead_us * 1e-6
    for fields in ({"cuda_graph_sizes": [8]}, {"overheads": {"step_seq_us": 3.0}}, {"num_scheduler_steps": 2},
                   {"overheads": {"step_us": 40.0}}):
        ln = launch(Serving.model_validate(fields), hw)
        assert ln is not None, fields
        assert ln.step_s == pytest.approx(40e-6 if "step_us" in str(fields) else step, rel=1e-12), fields
    assert launch(Serving.model_validate({"cuda_graph_sizes": [8]}), hw) == Launch((8,), True, False, False, step, 0.0, 1)


def test_a_pools_model_is_built_from_every_serving_field():
    """engine.pool_model hands each serving field to the part that uses it: the step model (tp,
    mode, async scheduling, EP imbalance, kernels, the stack's launch) and the KV blocks (the
    footprint's memory settings, whole blocks)."""
    from hwmodels.load import load_hardware
    from simulator.moment.memory import footprint
    from simulator.moment.model import load_model
    from simulator.moment.ops import Dtypes
    from simulator.serving.engine import launch, pool_model
    from simulator.serving.scenario import Serving

    hw, m = load_hardware("h100-sxm"), load_model("qwen3-30b-a3b")
    sv = Serving.model_validate({"tp": 2, "ep": 2, "moe_imbalance": 1.3, "async_scheduling": True,
                                 "kernels": "pytorch", "mode": "eager", "max_batch_size": 48, "block_size": 32,
                                 "gpu_memory_utilization": 0.8, "cuda_graph_sizes": [1, 2, 4]})
    dt = Dtypes.of(m)
    pm = pool_model(m, hw, dt, sv)
    sm = pm.cost
    assert (sm.tp, sm.ep, sm.moe_imbalance, sm.async_scheduling, sm.impl, sm.mode) == (
        2, 2, 1.3, True, "pytorch", "eager")
    assert sm.launch == launch(sv, hw)
    fp = footprint(m, hw, 2, 1, dt, 0.8, sv.activation_reserve_gb, 2, sv.memory_fraction_of)
    assert pm.cap_blocks == int(fp.kv_capacity_tokens) // 32 and isinstance(pm.cap_blocks, int)
