"""Reading the config.json of each family: what its fields mean (layer layouts, windows, experts,
formats), and one line with exit code 2 for a field that would change the cost and is not modelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodels.errors import InputError
from simulator.cli import main
from simulator.moment.model import PRESET_DIR, ModelSpec, load_model
from simulator.moment.ops import Batch, Dtypes, step_ops, total_flops


def preset(name: str) -> dict:
    d = json.loads((PRESET_DIR / f"{name}.json").read_text())
    d.pop("_source")
    return d


def write(tmp_path: Path, data: dict, name: str = "config.json") -> str:
    d = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    (d / name).write_text(json.dumps(data))
    return str(d / name)


# -- the three reports -----------------------------------------------------------------------

def test_qwen3_moe_counts_its_experts_not_a_dense_233b(tmp_path):
    # Qwen3-30B-A3B: 128 experts of moe_intermediate_size 768 in every layer, not intermediate_size 6144
    m = load_model(write(tmp_path, preset("qwen3-30b-a3b")))
    assert m.num_params() / 1e9 == pytest.approx(30.5, rel=0.01)
    assert m.moe_layer_count == 48 and m.expert_intermediate == 768


def test_deepseek_configs_load(tmp_path):
    m = load_model(write(tmp_path, preset("deepseek-v3")))
    assert m.is_mla and m.num_local_experts == 256 and m.num_experts_per_tok == 8
    assert (m.dense_layer_count, m.moe_layer_count) == (3, 58)  # first_k_dense_replace: 3
    assert m.shared_intermediate == 2048  # n_shared_experts 1 x moe_intermediate_size


def test_gemma_2_9b_reads_gated_gelu_and_head_dim(tmp_path):
    m = load_model(write(tmp_path, preset("gemma-2-9b")))
    assert m.gated and m.act == "gelu_pytorch_tanh" and m.hd == 256
    assert m.num_params() / 1e9 == pytest.approx(9.24, rel=0.005)


# -- fields not understood: one line, exit 2 -----------------------------------------------------------

@pytest.mark.parametrize("base, field, value", [
    ("llama-3-8b", "num_experts", 8),             # Qwen's name: a Llama config does not route
    ("qwen2.5-7b", "kv_lora_rank", 512),          # MLA belongs to DeepSeek
    ("mistral-7b", "sliding_window_pattern", 2),  # Gemma 3's, not Mistral's
    ("llama-3-8b", "ssm_state_size", 16),         # a hybrid state-space model's field
    ("gemma-2-9b", "num_local_experts", 8),
])
def test_a_cost_field_the_family_does_not_have_is_one_line(tmp_path, capsys, base, field, value):
    data = preset(base) | {field: value}
    path = write(tmp_path, data)
    with pytest.raises(InputError, match=field):
        load_model(path)
    rc = main(["memory", "--model", path, "--hardware", "h100-sxm"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and field in err and "Traceback" not in err


def test_an_unknown_family_is_one_line(tmp_path):
    with pytest.raises(InputError, match="model_type: 'falcon_mamba' is not a model family .*deepseek_v3"):
        load_model(write(tmp_path, preset("llama-3-8b") | {"model_type": "falcon_mamba"}))
    cfg = preset("llama-3-8b")
    del cfg["model_type"]
    with pytest.raises(InputError, match="architectures: 'RWForCausalLM'"):
        load_model(write(tmp_path, cfg | {"architectures": ["RWForCausalLM"]}))


def test_cost_neutral_fields_and_nulls_are_accepted(tmp_path):
    extra = {"rope_scaling": {"type": "yarn", "factor": 4.0}, "bos_token_id": 1, "eos_token_id": [2, 3],
             "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "bfloat16",
             "transformers_version": "4.51.0", "use_cache": True, "num_local_experts": 1}  # 1 expert: no MoE
    m = load_model(write(tmp_path, preset("llama-3-8b") | extra))
    assert m.num_params() == load_model("llama-3-8b").num_params()


def test_aliases_that_disagree_are_one_line(tmp_path):
    with pytest.raises(InputError, match="experts_per_token: 2 disagrees with num_experts_per_tok"):
        load_model(write(tmp_path, preset("gpt-oss-20b") | {"experts_per_token": 2}))


def test_a_dumped_spec_reloads_the_same(tmp_path):
    for name in ("deepseek-v3", "gemma-3-27b", "gpt-oss-120b", "llama-4-maverick", "qwen2-57b-a14b"):
        m = load_model(name)
        again = load_model(write(tmp_path, json.loads(m.model_dump_json(by_alias=False))))
        assert again.num_params() == m.num_params()
        assert again.layer_kinds == m.layer_kinds and again.native_formats == m.native_formats


# -- layer layouts ---------------------------------------------------------------------------------------

def test_attention_windows_per_family():
    # Gemma 2: even layers slide (4096), odd are full (HF: is_sliding = not layer_idx % 2)
    g2 = load_model("gemma-2-9b").layer_kinds
    assert g2[0] == "sliding_attention" and g2[1] == "full_attention" and g2.count("full_attention") == 21
    # Gemma 3: every 6th layer full (5, 11, ...): 62 layers -> 10 full, 52 sliding of 1024
    assert load_model("gemma-3-27b").attention_groups == (("full", None, 10), ("sliding", 1024, 52))
    assert load_model("gemma-3-1b").attention_groups == (("full", None, 4), ("sliding", 512, 22))
    # gpt-oss: its layer_types alternate sliding 128 / full
    assert load_model("gpt-oss-120b").attention_groups == (("full", None, 18), ("sliding", 128, 18))
    # Llama 4: RoPE layers attend within their 8192-token chunk, every 4th layer (NoPE) attends to
    # everything: 36 chunked, 12 full
    assert load_model("llama-4-scout").attention_groups == (("full", None, 12), ("chunked", 8192, 36))
    # Mistral 7B v0.1: every layer slides over 4096; Phi-3 over 2047
    assert load_model("mistral-7b").attention_groups == (("sliding", 4096, 32),)
    assert load_model("phi-3-mini").attention_groups == (("sliding", 2047, 32),)
    # Qwen: sliding_window is in every config but only counts with use_sliding_window: true
    assert load_model("qwen2.5-7b").attention_groups == (("full", None, 28),)


def test_qwen_sliding_window_from_max_window_layers(tmp_path):
    cfg = preset("qwen2.5-7b") | {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 20}
    assert load_model(write(tmp_path, cfg)).attention_groups == (("full", None, 20), ("sliding", 4096, 8))


def test_moe_layer_layouts():
    # Llama 4 Maverick: interleave_moe_layer_step 2 -> layers 1, 3, 5, ... route (24 of 48)
    flags = load_model("llama-4-maverick").moe_layer_flags
    assert sum(flags) == 24 and flags[1] and not flags[0]
    assert load_model("llama-4-scout").moe_layer_count == 48


def test_qwen_mlp_only_layers_and_sparse_step(tmp_path):
    cfg = preset("qwen3-30b-a3b") | {"mlp_only_layers": [0, 47], "decoder_sparse_step": 2}
    m = load_model(write(tmp_path, cfg))
    # MoE where (i + 1) % 2 == 0 and i not in {0, 47}: layers 1, 3, ..., 45 -> 23
    assert m.moe_layer_count == 23 and m.dense_layer_count == 25


# -- formats from quantization_config ---------------------------------------------------------------------

def test_checkpoint_formats():
    assert load_model("deepseek-v3").native_formats == ("fp8-block", "fp8-block")
    assert load_model("gpt-oss-120b").native_formats == ("bf16", "mxfp4")   # experts only
    assert load_model("qwen2.5-7b-awq").native_formats == ("int4-awq", "int4-awq")
    assert Dtypes.of(load_model("gpt-oss-20b")) == Dtypes("bf16", "bf16", "bf16", "mxfp4")
    assert Dtypes.of(load_model("gpt-oss-20b"), "fp8") == Dtypes("fp8", "bf16", "bf16")  # the run's choice wins
    assert Dtypes.of(load_model("llama-3-8b"), act="fp32") == Dtypes("fp32", "fp32", "fp32")


@pytest.mark.parametrize("quant, formats", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}, ("int4-gptq", "int4-gptq")),
    ({"quant_method": "gptq", "bits": 8}, ("int8", "int8")),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, ("nvfp4", "nvfp4")),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, ("fp8", "fp8")),
])
def test_quantization_configs(tmp_path, quant, formats):
    m = load_model(write(tmp_path, preset("llama-3-8b") | {"quantization_config": quant}))
    assert m.native_formats == formats


@pytest.mark.parametrize("quant, field", [
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "quant_method"),
    ({"quant_method": "awq", "bits": 3}, "bits"),
    ({"quant_method": "modelopt", "quant_algo": "W4A8_AWQ"}, "quant_algo"),
])
def test_unmodelled_quantization_is_one_line(tmp_path, quant, field):
    with pytest.raises(InputError, match=f"quantization_config.*{field}"):
        load_model(write(tmp_path, preset("llama-3-8b") | {"quantization_config": quant}))


def test_multimodal_wrappers_cost_the_text_model(tmp_path):
    m = load_model("gemma-3-27b")
    assert m.model_type == "gemma3_text" and m.family.qk_norm == "rms" and m.family.norms == 4 and m.tied
    cfg = preset("gemma-3-27b") | {"vision_config": {"hidden_size": 1152, "num_hidden_layers": 27}}
    assert load_model(write(tmp_path, cfg)).num_params() == m.num_params()
    with pytest.raises(InputError, match="hidden_size"):  # a text field beside text_config is not read
        load_model(write(tmp_path, cfg | {"hidden_size": 4096}))


def test_a_sparse_text_config_takes_the_families_defaults(tmp_path):
    # published multimodal configs leave fields to the HF class (Gemma3TextConfig: vocab 262208,
    # head_dim 256, window 4096); momentsim fills the same values
    text = {"model_type": "gemma3_text", "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
            "num_attention_heads": 16, "num_key_value_heads": 8, "sliding_window": 1024}
    m = load_model(write(tmp_path, {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                                    "text_config": text}))
    assert m.num_params() == load_model("gemma-3-12b").num_params()
    assert m.attention_groups == (("full", None, 8), ("sliding", 1024, 40))


def test_a_generic_config_without_model_type_is_llama_like():
    m = ModelSpec(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                  vocab_size=100, hidden_act="gelu")
    assert not m.gated and m.family.norms == 2 and not m.tied
    # plain MLP: up and down 256 x 512, attention 4 x 256^2, 2 norms; embeddings untied
    assert m.num_params() == 2 * (2 * 256 * 512 + 4 * 256 * 256 + 2 * 256) + 2 * 100 * 256 + 256


# -- expert parallelism as a user sets it ----------------------------------------------------------------

@pytest.mark.parametrize("args, flag, words", [
    (["--model", "deepseek-v3", "--tp", "8", "--ep", "4"], "--ep", "must be 1 or equal tp=8"),
    (["--model", "llama-3-8b", "--tp", "2", "--ep", "2"], "--ep", "mixture-of-experts"),
    (["--model", "deepseek-v3", "--tp", "8", "--ep", "8", "--moe-imbalance", "0.5"], "--moe-imbalance", "within 1"),
    (["--model", "deepseek-v3", "--tp", "8", "--ep", "0"], "--ep", ">= 1"),
])
def test_bad_expert_parallelism_is_one_line(capsys, args, flag, words):
    rc = main(["step", "--hardware", "h200-sxm", "--decode", "4x100", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"momentsim: {flag}:") and words in err and err.count("\n") == 1


def test_scenario_ep_is_checked_before_simulating(tmp_path):
    from simulator.serving.engine import check_scenario
    from simulator.serving.scenario import load_scenario

    p = tmp_path / "s.yaml"
    p.write_text("model: deepseek-v3\nhardware: h200-sxm\nserving: {tp: 8, ep: 2}\n")
    with pytest.raises(InputError, match="serving.ep: ep=2 must be 1 or equal tp=8"):
        check_scenario(load_scenario(p), str(p))
    p.write_text("model: deepseek-v3\nhardware: h200-sxm\nserving: {tp: 8, ep: 8, moe_imbalance: 0.9}\n")
    with pytest.raises(InputError, match="serving.moe_imbalance"):
        load_scenario(p)


# -- hostile configs of the new families ----------------------------------------------------------------------

_values = (st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=8) | st.lists(st.integers(-3, 100), max_size=5)
           | st.sampled_from(["sliding_attention", "chunked_attention", "fp8", "mxfp4", "awq", [128, 128]]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["deepseek-v3", "gemma-3-27b", "gpt-oss-120b", "llama-4-scout", "qwen2-57b-a14b"]),
       st.data())
def test_a_mutated_config_loads_and_costs_or_is_one_line(tmp_path, name, data):
    cfg = preset(name)
    inner = cfg.get("text_config", cfg)
    key = data.draw(st.sampled_from(sorted(inner) + ["quantization_config", "layer_types", "moe_layers"]))
    if data.draw(st.booleans()):
        inner[key] = data.draw(_values)
    else:
        inner.pop(key, None)
    try:
        m = load_model(write(tmp_path, cfg))
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert m.num_params() >= 0 and m.kv_bytes_per_token() >= 0
    assert total_flops(step_ops(m, Batch.of(decode=[(2, 100)], prefill=[(1, 64)]), Dtypes.of(m))) > 0


# -- what a user reads: each message whole, naming the file and the field ----------------------------------

def test_config_messages_name_the_file_and_the_field_exactly(tmp_path):
    from simulator.moment.model import FAMILIES, _spec

    def err(data: dict) -> str:
        path = write(tmp_path, data)
        with pytest.raises(InputError) as e:
            load_model(path)
        return str(e.value).removeprefix(path + ": ")

    with pytest.raises(InputError) as e:  # load_mapping refuses a list first; _spec on its own too
        _spec([1, 2], "x", "f.json")
    assert str(e.value) == "f.json: must be a mapping of Hugging Face config fields"
    assert err({"model_type": "gemma3", "text_config": 3}) == (
        "text_config: must be a mapping of the text model's config fields")
    assert err({"model_type": "gemma3", "text_config": {}, "num_hidden_layers": 3}) == (
        "num_hidden_layers: not modelled beside a text_config and may change the cost")
    assert err(preset("llama-3-8b") | {"ssm_state_size": 16}) == (
        "ssm_state_size: not modelled for model_type llama and may change the cost; allowed: the fields "
        "listed for it in simulator/moment/model.py")
    generic = {k: v for k, v in preset("llama-3-8b").items() if k not in ("model_type", "architectures")}
    assert err(generic | {"ssm_state_size": 16}).startswith(
        "ssm_state_size: not modelled for model_type (none: Llama-like) and may change the cost")
    known = ", ".join(sorted(k for k in FAMILIES if k))
    assert err(preset("llama-3-8b") | {"model_type": "rwkv"}) == (
        f"model_type: 'rwkv' is not a model family momentsim models; known model_type: {known}")
    assert err(preset("gpt-oss-20b") | {"experts_per_token": 2}) == (
        "experts_per_token: 2 disagrees with num_experts_per_tok (4)")


def test_family_from_architectures_wrappers_and_top_level_fields(tmp_path):
    cfg = {k: v for k, v in preset("mistral-7b").items() if k != "model_type"}
    m = load_model(write(tmp_path, cfg | {"architectures": ["MistralForCausalLM"]}))
    assert m.model_type == "mistral" and m.num_params() == load_model("mistral-7b").num_params()
    # a wrapper's text_config without a model_type is the wrapper's text model; the wrapper's
    # tie_word_embeddings and quantization_config apply to it; "_" keys are comments
    text = {k: v for k, v in preset("gemma-3-1b").items() if k not in ("model_type", "architectures")}
    m = load_model(write(tmp_path, {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"],
                                    "tie_word_embeddings": False, "_comment": 1,
                                    "quantization_config": {"quant_method": "fp8"},
                                    "text_config": text | {"_name_or_path": "x"}}))
    g = load_model("gemma-3-1b")
    assert m.model_type == "gemma3_text" and m.architectures == ["Gemma3ForConditionalGeneration"]
    assert m.num_params() == g.num_params() + g.vocab_size * g.hidden_size  # untied: a head of its own
    assert m.native_formats == ("fp8", "fp8")
    # without architectures the wrapper's own model_type says which text model it holds
    m2 = load_model(write(tmp_path, {"model_type": "gemma3", "text_config": text}))
    assert m2.model_type == "gemma3_text" and m2.num_params() == g.num_params()
    # an empty model_type counts as none: the wrapper's (text_config) or the architecture (top level)
    for odd in ("", None, 7):  # empty, null or not a string: as if absent
        m3 = load_model(write(tmp_path, {"model_type": "gemma3", "text_config": text | {"model_type": odd}}))
        assert m3.model_type == "gemma3_text" and m3.num_params() == g.num_params()
    m4 = load_model(write(tmp_path, cfg | {"model_type": "", "architectures": ["MistralForCausalLM"]}))
    assert m4.model_type == "mistral"
    # a field out of its bounds names the file
    path = write(tmp_path, preset("llama-3-8b") | {"hidden_size": -1})
    with pytest.raises(InputError) as e:
        load_model(path)
    assert str(e.value).startswith(f"{path}: hidden_size: ")
    # a preset is named by its name, a config.json by its folder
    assert load_model("llama-3-8b").name == "llama-3-8b"
    path = write(tmp_path, preset("llama-3-8b"))
    assert load_model(path).name == Path(path).parent.name


@pytest.mark.parametrize("quant, moe, formats", [
    ({"quant_method": "mxfp4"}, False, ("mxfp4", "mxfp4")),   # a dense model: every linear layer
    ({"quant_method": "mxfp4"}, True, ("bf16", "mxfp4")),     # gpt-oss: experts only
    ({"quant_method": "FP8", "weight_block_size": [128, 128]}, False, ("fp8-block", "fp8-block")),
    ({"quant_method": "modelopt", "quant_algo": "fp8"}, False, ("fp8", "fp8")),
    ({"quant_method": "awq", "bits": 4}, False, ("int4-awq", "int4-awq")),
])
def test_quantization_formats(quant, moe, formats):
    from simulator.moment.model import Quantization
    assert Quantization.model_validate(quant).formats(moe) == formats


@pytest.mark.parametrize("quant, message", [
    ({"quant_method": "gptq", "bits": 3}, "bits 3 is not modelled for gptq; allowed: 4, 8"),
    ({"quant_method": "awq", "bits": 8}, "bits 8 is not modelled for awq; allowed: 4"),
    ({"quant_method": "modelopt"}, "quant_algo None is not modelled; allowed: NVFP4, FP8"),
    ({"quant_method": "bnb"}, "quant_method 'bnb' is not modelled; allowed: awq, fp8, gptq, modelopt, mxfp4 "
                              "(or set the weight dtype of the run)"),
])
def test_unmodelled_quantization_messages(quant, message):
    from simulator.moment.model import Quantization
    with pytest.raises(ValueError) as e:
        Quantization.model_validate(quant)
    assert f"{message} [type=value_error" in str(e.value)  # the whole message, nothing after it
