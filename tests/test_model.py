"""Parameter counts against the published ones, and memory footprints worked out by hand."""

import json

import pytest

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import load_model, preset_names
from simulator.moment.ops import Dtypes


@pytest.mark.parametrize(
    "name, billions, tol",
    [
        ("llama-3-8b", 8.03, 0.005),        # Meta model card: 8.03B
        ("llama-2-7b", 6.74, 0.005),        # Llama 2 paper / HF: 6.74B
        ("llama-2-13b", 13.02, 0.01),       # HF: 13.0B
        ("llama-2-70b", 68.98, 0.01),       # HF: 69.0B
        ("llama-3-70b", 70.55, 0.01),       # HF: 70.6B
        ("llama-3.2-1b", 1.24, 0.005),      # Meta model card: 1.23B (1.24B with tied embeddings once)
        ("mixtral-8x7b", 46.7, 0.05),       # Mistral AI: 46.7B total
        ("mistral-7b", 7.24, 0.01),         # Mistral AI: 7.3B (HF count 7.24B)
        ("qwen2-7b", 7.62, 0.01),           # Qwen2 report: 7.6B (HF count 7.62B)
    ],
)
def test_param_counts_match_published(name, billions, tol):
    assert load_model(name).num_params() / 1e9 == pytest.approx(billions, abs=tol)


def test_mixtral_active_params():
    # Mistral AI: 12.9B parameters used per token (2 of 8 experts)
    assert load_model("mixtral-8x7b").num_params(active=True) / 1e9 == pytest.approx(12.9, abs=0.05)


def test_llama3_8b_count_by_hand():
    # embed 128256*4096 twice (untied) + 32 layers of (q,o 4096^2; k,v 4096*1024; MLP 3*4096*14336;
    # 2 norms of 4096) + final norm 4096
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert load_model("llama-3-8b").num_params() == 2 * 128256 * 4096 + 32 * layer + 4096


def test_kv_bytes_per_token_by_hand():
    # Llama-3-8B: 2 (K,V) x 32 layers x 8 kv heads x 128 dims x 2 bytes = 131072
    m = load_model("llama-3-8b")
    assert m.kv_bytes_per_token("bf16") == 131072
    assert m.kv_bytes_per_token("fp8") == 65536
    assert m.kv_bytes_per_token("bf16", tp=2) == 65536
    assert m.kv_bytes_per_token("bf16", tp=8) == 16384      # 1 kv head per device
    assert m.kv_bytes_per_token("bf16", tp=16) == 16384     # replicated beyond kv heads
    # Llama-2-7B (no GQA): 2 x 32 x 32 x 128 x 2 = 524288 = 0.5 MiB
    assert load_model("llama-2-7b").kv_bytes_per_token() == 524288


def test_head_dim_differs_from_hidden_over_heads(tmp_path):
    cfg = {"hidden_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
           "head_dim": 256, "intermediate_size": 4096, "vocab_size": 1000}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    m = load_model(str(p))
    assert m.q_dim == 2048 and m.kv_dim == 512
    # attention: q 1024x2048, k,v 1024x512 each, o 2048x1024
    assert m.attn_params() == 1024 * 2048 * 2 + 2 * 1024 * 512


def test_footprint_and_kv_capacity_by_hand():
    m, hw = load_model("llama-3-8b"), load_hardware("h100-sxm")
    fp = footprint(m, hw, utilization=0.9, reserve_gb=1.0)
    assert fp.weights_gb == pytest.approx(8.030261248 * 2, rel=1e-6)
    usable = hw.device.memory_gb * 1e9 * 0.9
    assert fp.kv_capacity_tokens == int((usable - m.num_params() * 2 - 1e9) // 131072)


def test_70b_does_not_fit_one_h100_and_says_what_would():
    m, hw = load_model("llama-3-70b"), load_hardware("h100-sxm")
    with pytest.raises(InputError) as e:
        check_fits(m, hw)
    msg = str(e.value)
    assert "\n" not in msg and "needs" in msg and "GB" in msg and "tp >=" in msg
    check_fits(m, hw, tp=4)
    check_fits(m, hw, tp=1, dt=Dtypes(weight="int4"))


def test_unknown_and_malformed_models(tmp_path):
    with pytest.raises(InputError, match="known presets: .*llama-3-8b"):
        load_model("no-such-model")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        load_model(str(bad))
    bad.write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(InputError, match="num_hidden_layers"):
        load_model(str(bad))
    bad.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 6,
                               "num_key_value_heads": 4, "intermediate_size": 8, "vocab_size": 10}))
    with pytest.raises(InputError, match="multiple"):
        load_model(str(bad))


def test_all_presets_load():
    assert len(preset_names()) >= 9
    for n in preset_names():
        assert load_model(n).num_params() > 0.5e9
