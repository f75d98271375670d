"""Parameter counts against the published ones, and memory footprints worked out by hand."""

import json

import pytest

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import PRESET_DIR, load_model, preset_names
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


# Every other preset against its publisher's total (Hugging Face's safetensors count where the
# publisher gives only a round number), within 1 %. Multimodal checkpoints: the text model.
PUBLISHED_TOTAL_B = [
    ("llama-3.1-8b", 8.03),        # HF meta-llama/Llama-3.1-8B: 8.03B
    ("llama-3.1-70b", 70.6),       # HF: 70.6B
    ("llama-3.1-405b", 405.0),     # Meta: 405B (HF: 406B)
    ("llama-3.2-3b", 3.21),        # Meta model card: 3.21B
    ("llama-3.3-70b", 70.6),       # HF: 70.6B
    ("llama-4-maverick", 400.0),   # Meta model card: 400B total (17B active, 128 experts)
    ("mistral-nemo-12b", 12.2),    # HF mistralai/Mistral-Nemo-Base-2407: 12.2B
    ("mistral-small-24b", 23.6),   # HF mistralai/Mistral-Small-24B-Base-2501: 23.6B
    ("mixtral-8x22b", 141.0),      # Mistral AI: 141B total, 39B active
    ("qwen2.5-7b", 7.61),          # Qwen2.5 model card: 7.61B
    ("qwen2.5-7b-awq", 7.61),      # the same weights, AWQ-packed
    ("qwen2.5-32b", 32.5),         # Qwen2.5 model card: 32.5B
    ("qwen2.5-72b", 72.7),         # Qwen2.5 model card: 72.7B
    ("qwen3-0.6b", 0.6),           # Qwen3 model card: 0.6B (0.44B non-embedding)
    ("qwen3-4b", 4.0),             # Qwen3 model card: 4.0B
    ("qwen3-8b", 8.2),             # Qwen3 model card: 8.2B
    ("qwen3-32b", 32.8),           # Qwen3 model card: 32.8B
    ("qwen3-30b-a3b", 30.5),       # Qwen3 model card: 30.5B total, 3.3B activated
    ("qwen3-235b-a22b", 235.0),    # Qwen3 model card: 235B total, 22B activated
    ("qwen1.5-moe-a2.7b", 14.3),   # Qwen1.5-MoE blog/card: 14.3B total, 2.7B activated
    ("qwen2-57b-a14b", 57.4),      # Qwen2 report: 57.4B total (A14B: 14B activated)
    ("deepseek-v2-lite", 15.7),    # DeepSeek-V2 paper: V2-Lite 15.7B total, 2.4B activated
    ("deepseek-v2", 236.0),        # DeepSeek-V2 paper: 236B total, 21B activated
    ("deepseek-v3", 671.0),        # DeepSeek-V3 report: 671B total (+14B MTP module, not served), 37B activated
    ("deepseek-r1", 671.0),        # DeepSeek-R1: the V3 architecture, 671B
    ("gemma-2-2b", 2.61),          # HF google/gemma-2-2b: 2.61B
    ("gemma-2-9b", 9.24),          # HF google/gemma-2-9b: 9.24B
    ("gemma-2-27b", 27.2),         # HF google/gemma-2-27b: 27.2B
    ("gemma-3-1b", 1.000),         # Gemma 3 report, table 1: 302M embedding + 698M non-embedding
    ("gemma-3-12b", 11.77),        # Gemma 3 report: 1,012M + 10,759M (+417M vision encoder, not costed)
    ("gemma-3-27b", 27.02),        # Gemma 3 report: 1,416M + 25,600M (+417M vision encoder, not costed)
    ("gpt-oss-20b", 20.91),        # OpenAI gpt-oss model card: 20.91B total
    ("gpt-oss-120b", 116.83),      # OpenAI gpt-oss model card: 116.83B total
    ("phi-3-mini", 3.82),          # HF microsoft/Phi-3-mini-4k-instruct: 3.82B
    ("phi-3-medium", 14.0),        # HF microsoft/Phi-3-medium-4k-instruct: 14.0B
    ("phi-4", 14.7),               # HF microsoft/phi-4: 14.7B
]


@pytest.mark.parametrize("name, billions", PUBLISHED_TOTAL_B)
def test_2025_presets_match_published_totals(name, billions):
    assert load_model(name).num_params() / 1e9 == pytest.approx(billions, rel=0.01)


def test_every_preset_has_a_published_count_and_a_source():
    tested = {n for n, *_ in PUBLISHED_TOTAL_B} | {"llama-3-8b", "llama-2-7b", "llama-2-13b", "llama-2-70b",
                                                   "llama-3-70b", "llama-3.2-1b", "mixtral-8x7b", "mistral-7b",
                                                   "qwen2-7b", "llama-4-scout"}
    assert set(preset_names()) <= tested
    assert len(preset_names()) >= 34  # the 9 of the contract + at least 25 of 2024-26
    for n in preset_names():
        src = json.loads((PRESET_DIR / f"{n}.json").read_text())["_source"]
        assert "/" in src and "config.json" in src  # the Hugging Face repo it was written from


def test_llama_4_scout_with_its_vision_encoder_is_the_published_109b():
    # Meta: 109B total, counting the vision encoder that momentsim does not cost. Its published
    # vision_config by hand (hidden 1408, 34 layers, MLP 5632, 14x14 patches of 336x336 images,
    # pixel-shuffled 4x into 5632 -> 4096 -> 4096, projected to the text width 5120):
    layer = 4 * (1408 * 1408 + 1408) + (1408 * 5632 + 5632) + (5632 * 1408 + 1408) + 4 * 1408
    vision = (34 * layer + 3 * 14 * 14 * 1408 + 1408 + 577 * 1408 + 4 * 1408
              + 5632 * 4096 + 4096 * 4096 + 4096 * 5120)
    assert vision / 1e9 == pytest.approx(0.872, abs=0.001)
    assert (load_model("llama-4-scout").num_params() + vision) / 1e9 == pytest.approx(109, rel=0.01)


# Active parameters as published. Publishers round these to 2-3 digits (a "17B" covers 16.5-17.5),
# and two conventions exist: Mistral, Qwen and Meta count both embedding tables; DeepSeek and
# OpenAI leave out the input embedding (a row gather, not a matrix product).
ACTIVE_B = [
    ("mixtral-8x7b", 12.9, 0.05, True),      # Mistral AI: 12.9B
    ("mixtral-8x22b", 39.0, 0.5, True),      # Mistral AI: 39B
    ("qwen3-30b-a3b", 3.35, 0.05, True),     # Qwen: "3.3B" (3.35B counted here: Qwen's figure truncates)
    ("qwen3-235b-a22b", 22.0, 0.5, True),    # Qwen: 22B
    ("qwen1.5-moe-a2.7b", 2.7, 0.05, True),  # Qwen: 2.7B
    ("qwen2-57b-a14b", 14.0, 0.5, True),     # Qwen: 14B
    ("llama-4-scout", 17.0, 0.5, True),      # Meta: 17B
    ("llama-4-maverick", 17.0, 0.5, True),   # Meta: 17B
    ("deepseek-v2", 21.0, 0.5, False),       # DeepSeek: 21B
    ("deepseek-v3", 37.0, 0.5, False),       # DeepSeek: 37B
    ("gpt-oss-20b", 3.61, 0.005, False),     # OpenAI: 3.61B
    ("gpt-oss-120b", 5.13, 0.005, False),    # OpenAI: 5.13B
]


@pytest.mark.parametrize("name, billions, rounding, both_embeddings", ACTIVE_B)
def test_active_params_match_published(name, billions, rounding, both_embeddings):
    m = load_model(name)
    active = m.num_params(active=True) - (0 if both_embeddings else m.vocab_size * m.hidden_size)
    assert active / 1e9 == pytest.approx(billions, abs=rounding)


# KV bytes per token in bf16, by hand: 2 (K, V) x layers x KV heads x head dim x 2 bytes; MLA
# (DeepSeek): layers x (kv_lora_rank 512 + rope key 64) x 2 bytes, the compressed latent.
KV_BY_HAND = {
    "llama-3.1-8b": 2 * 32 * 8 * 128 * 2, "llama-3.1-70b": 2 * 80 * 8 * 128 * 2,
    "llama-3.1-405b": 2 * 126 * 8 * 128 * 2, "llama-3.2-3b": 2 * 28 * 8 * 128 * 2,
    "llama-3.3-70b": 2 * 80 * 8 * 128 * 2, "llama-4-scout": 2 * 48 * 8 * 128 * 2,
    "llama-4-maverick": 2 * 48 * 8 * 128 * 2, "mistral-nemo-12b": 2 * 40 * 8 * 128 * 2,
    "mistral-small-24b": 2 * 40 * 8 * 128 * 2, "mixtral-8x22b": 2 * 56 * 8 * 128 * 2,
    "qwen2.5-7b": 2 * 28 * 4 * 128 * 2, "qwen2.5-7b-awq": 2 * 28 * 4 * 128 * 2,
    "qwen2.5-32b": 2 * 64 * 8 * 128 * 2, "qwen2.5-72b": 2 * 80 * 8 * 128 * 2,
    "qwen3-0.6b": 2 * 28 * 8 * 128 * 2, "qwen3-4b": 2 * 36 * 8 * 128 * 2, "qwen3-8b": 2 * 36 * 8 * 128 * 2,
    "qwen3-32b": 2 * 64 * 8 * 128 * 2, "qwen3-30b-a3b": 2 * 48 * 4 * 128 * 2,
    "qwen3-235b-a22b": 2 * 94 * 4 * 128 * 2, "qwen1.5-moe-a2.7b": 2 * 24 * 16 * 128 * 2,
    "qwen2-57b-a14b": 2 * 28 * 4 * 128 * 2,
    "deepseek-v2-lite": 27 * 576 * 2, "deepseek-v2": 60 * 576 * 2, "deepseek-v3": 61 * 576 * 2,
    "deepseek-r1": 61 * 576 * 2,
    "gemma-2-2b": 2 * 26 * 4 * 256 * 2, "gemma-2-9b": 2 * 42 * 8 * 256 * 2, "gemma-2-27b": 2 * 46 * 16 * 128 * 2,
    "gemma-3-1b": 2 * 26 * 1 * 256 * 2, "gemma-3-12b": 2 * 48 * 8 * 256 * 2, "gemma-3-27b": 2 * 62 * 16 * 128 * 2,
    "gpt-oss-20b": 2 * 24 * 8 * 64 * 2, "gpt-oss-120b": 2 * 36 * 8 * 64 * 2,
    "phi-3-mini": 2 * 32 * 32 * 96 * 2, "phi-3-medium": 2 * 40 * 10 * 128 * 2, "phi-4": 2 * 40 * 10 * 128 * 2,
}


@pytest.mark.parametrize("name", sorted(KV_BY_HAND))
def test_kv_bytes_per_token_of_each_preset_by_hand(name):
    assert load_model(name).kv_bytes_per_token("bf16") == KV_BY_HAND[name]


def test_mla_kv_cache_is_the_latent_on_every_tp_device():
    # DeepSeek-V2 paper: (d_c + d_h^R) x layers = (512 + 64) x 60 = 34,560 values per token, for
    # all 128 heads (MHA would keep 2 x 128 x 128 x 60 = 1,966,080); tp does not split it
    m = load_model("deepseek-v2")
    assert m.kv_bytes_per_token("bf16") == 34_560 * 2
    assert m.kv_bytes_per_token("bf16", tp=8) == 34_560 * 2
    assert m.kv_bytes_per_token("fp8", tp=8) == 34_560
    assert load_model("deepseek-v3").kv_bytes_per_token("bf16", pp=61) == 576 * 2


def test_mixtral_active_params():
    # Mistral AI: 12.9B parameters used per token (2 of 8 experts)
    assert load_model("mixtral-8x7b").num_params(active=True) / 1e9 == pytest.approx(12.9, abs=0.05)


def test_moe_counts_by_hand_include_the_router():
    """Exact counts (the published figures round to 0.1B, which would hide the router's 1M):
    Mixtral-8x7B: embed and head 32000 x 4096 each, 32 layers of q, o 4096^2, k, v 4096 x 1024,
    8 experts of 3 x 4096 x 14336, a router 4096 x 8 and 2 norms, a final norm; a token runs 2
    experts. Qwen3-30B-A3B: 151936 x 2048 twice, 48 layers of q 2048 x 4096, k, v 2048 x 512,
    o 4096 x 2048, q/k norms of 128, 128 experts of 3 x 2048 x 768, a router 2048 x 128, 2 norms;
    8 experts per token."""
    h = 4096
    attn = 2 * h * h + 2 * h * 1024 + h * 8 + 2 * h
    mixtral = load_model("mixtral-8x7b")
    assert mixtral.num_params() == 2 * 32000 * h + 32 * (attn + 8 * 3 * h * 14336) + h
    assert mixtral.num_params(active=True) == 2 * 32000 * h + 32 * (attn + 2 * 3 * h * 14336) + h
    h = 2048
    attn = h * 4096 + 2 * h * 512 + 4096 * h + 2 * 128 + h * 128 + 2 * h
    qwen = load_model("qwen3-30b-a3b")
    assert qwen.num_params() == 2 * 151936 * h + 48 * (attn + 128 * 3 * h * 768) + h
    assert qwen.num_params(active=True) == 2 * 151936 * h + 48 * (attn + 8 * 3 * h * 768) + h


def test_llama3_8b_count_by_hand():
    # embed 128256*4096 twice (untied) + 32 layers of (q,o 4096^2; k,v 4096*1024; MLP 3*4096*14336;
    # 2 norms of 4096) + final norm 4096
    layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert load_model("llama-3-8b").num_params() == 2 * 128256 * 4096 + 32 * layer + 4096
    assert load_model("llama-3-8b").layer_params() == layer  # what calibration sizes a layer by


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



def test_mla_moe_and_biased_moe_counts_by_hand():
    """Exact counts of three more layouts (their publishers' 15.7B / 2.4B, 20.91B / 3.61B and
    14.3B / 2.7B round these):
    DeepSeek-V2-Lite, MLA without a q bottleneck: per layer q 2048 x 16 x (128 + 64), the latent
    and rope key 2048 x (512 + 64), its norm 512, kv up-projection 512 x 16 x (128 + 128),
    o 16 x 128 x 2048, 2 norms; layer 1 dense (3 x 2048 x 10944), 26 MoE layers of 64 routed
    experts (6 per token) and 2 shared ones of 3 x 2048 x 1408 and a router 2048 x 64.
    gpt-oss-20b, biases everywhere: q 2880 x 4096, k, v 2880 x 512, o 4096 x 2880 each with its
    bias, 64 attention sinks, 2 norms; 32 experts (4 per token) of gate/up 2880 x 5760 and down
    2880 x 2880 with biases, a router 2880 x 32 with bias.
    Qwen1.5-MoE-A2.7B: q, k, v 2048^2 with biases, o 2048^2, 2 norms; 60 experts (4 per token)
    of 3 x 2048 x 1408, a shared expert 3 x 2048 x 5632 with its sigmoid gate (2048), a router
    2048 x 60."""
    h = 2048
    attn = h * 16 * 192 + h * 576 + 512 + 512 * 16 * 256 + 16 * 128 * h + 2 * h
    moe = lambda k: k * 3 * h * 1408 + 2 * 3 * h * 1408 + h * 64  # noqa: E731
    outer = 2 * 102400 * h + h + 27 * attn + 3 * h * 10944
    ds = load_model("deepseek-v2-lite")
    assert ds.num_params() == outer + 26 * moe(64)
    assert ds.num_params(active=True) == outer + 26 * moe(6)
    h = 2880
    attn = h * 4096 + 4096 + 2 * (h * 512 + 512) + 4096 * h + h + 64 + 2 * h
    expert = 2880 * 5760 + 5760 + 2880 * 2880 + 2880
    oss = load_model("gpt-oss-20b")
    outer = 2 * 201088 * h + h
    assert oss.num_params() == outer + 24 * (attn + 32 * expert + h * 32 + 32)
    assert oss.num_params(active=True) == outer + 24 * (attn + 4 * expert + h * 32 + 32)
    h = 2048
    attn = 3 * (h * h + h) + h * h + 2 * h
    shared = 3 * h * 5632 + h + h * 60
    qw = load_model("qwen1.5-moe-a2.7b")
    assert qw.num_params() == 2 * 151936 * h + h + 24 * (attn + 60 * 3 * h * 1408 + shared)
    assert qw.num_params(active=True) == 2 * 151936 * h + h + 24 * (attn + 4 * 3 * h * 1408 + shared)


def test_biases_of_a_dense_mlp_and_attention_by_hand(tmp_path):
    """A Llama config with attention_bias and mlp_bias: q, k, v and o carry biases (q_dim, 2 x
    kv_dim, hidden), gate and up one of the intermediate size each, down one of the hidden size."""
    h, i, L, V = 256, 512, 3, 1000
    cfg = {"model_type": "llama", "hidden_size": h, "num_hidden_layers": L, "num_attention_heads": 8,
           "num_key_value_heads": 2, "intermediate_size": i, "vocab_size": V, "tie_word_embeddings": False}
    plain = 2 * h * h + 2 * h * 64 + 3 * h * i + 2 * h

    def count(**over) -> int:
        p = tmp_path / f"config-{len(over)}-{'-'.join(over)}.json"
        p.write_text(json.dumps(cfg | over))
        return load_model(str(p)).num_params()

    assert count() == 2 * V * h + L * plain + h
    biases = (h + 2 * 64 + h) + (2 * i + h)
    assert count(attention_bias=True, mlp_bias=True) == 2 * V * h + L * (plain + biases) + h
    assert count(mlp_bias=True) == 2 * V * h + L * (plain + 2 * i + h) + h
    assert count(tie_word_embeddings=True) == V * h + L * plain + h
    # a config of no known family with a plain GELU: an ungated MLP, up and down with their biases
    g = tmp_path / "generic.json"
    g.write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_type"} | {"hidden_act": "gelu",
                                                                                 "mlp_bias": True}))
    ungated = 2 * h * h + 2 * h * 64 + 2 * h * i + (i + h) + 2 * h
    assert load_model(str(g)).num_params() == 2 * V * h + L * ungated + h


def test_weight_bytes_by_hand():
    m = load_model("llama-3-8b")
    n = m.num_params()
    assert m.weight_bytes("fp32") == 4 * n and m.weight_bytes() == 2 * n and m.weight_bytes("bf16", tp=2) == n
    # int8 weights: the linear layers at 1 byte, embeddings, head and norms stay at 2
    linear = 32 * (4096 * 6144 + 4096 * 4096 + 3 * 4096 * 14336)
    assert m.weight_bytes("int8") == linear + 2 * (n - linear)
    assert m.weight_bytes("int8", pp=4) == (linear + 2 * (n - linear)) / 4
    # DeepSeek-V2-Lite with ep = 2 (and tp = 2): the latent and rope-key projections (2048 x 576
    # per layer) and the shared experts (2 x 3 x 2048 x 1408 per MoE layer) are whole on each device
    ds = load_model("deepseek-v2-lite")
    rep = 27 * 2048 * 576 + 26 * 2 * 3 * 2048 * 1408
    assert ds.weight_bytes("bf16", tp=2, ep=2) == pytest.approx((2 * ds.num_params() - 2 * rep) / 2 + 2 * rep)
    assert ds.weight_bytes("bf16", tp=2) == pytest.approx((2 * ds.num_params() - 2 * 27 * 2048 * 576) / 2
                                                          + 2 * 27 * 2048 * 576)


def test_quantised_weight_bytes_of_moe_and_ungated_models_by_hand(tmp_path):
    """int8 weights: every linear layer at 1 byte (attention, shared and routed experts, dense
    MLPs), norms, routers, biases and embeddings at 2 bytes."""
    q = load_model("qwen3-30b-a3b")  # 48 layers: q 2048 x 4096, k, v 2048 x 512, o 4096 x 2048, 128 experts
    linear = 48 * (2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048 + 128 * 3 * 2048 * 768)
    assert q.weight_bytes("int8") == linear + 2 * (q.num_params() - linear)
    ds = load_model("deepseek-v2-lite")  # MLA projections, 1 dense layer, 2 shared + 64 routed experts
    linear = 27 * (2048 * 16 * 192 + 2048 * 576 + 512 * 16 * 256 + 16 * 128 * 2048) + 3 * 2048 * 10944 \
        + 26 * (2 + 64) * 3 * 2048 * 1408
    assert ds.weight_bytes("int8") == linear + 2 * (ds.num_params() - linear)
    cfg = {"hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
           "intermediate_size": 512, "vocab_size": 1000, "hidden_act": "gelu"}  # a plain (ungated) MLP
    p = tmp_path / "gelu.json"
    p.write_text(json.dumps(cfg))
    g = load_model(str(p))
    linear = 3 * (2 * 256 * 256 + 2 * 256 * 64 + 2 * 256 * 512)
    assert g.weight_bytes("int8") == linear + 2 * (g.num_params() - linear)
