"""`momentsim step` as a user runs it: the contract's JSON for every preset pair, one-line errors."""

import json
import subprocess
import sys

import pytest

from hwmodels.load import load_hardware
from hwmodels.load import preset_names as hw_presets
from simulator.cli import main
from simulator.moment.memory import footprint
from simulator.moment.model import load_model
from simulator.moment.model import preset_names as model_presets
from simulator.moment.ops import Dtypes

KEYS = {"embed", "norm", "qkv_proj", "rope", "attention", "o_proj", "ffn_up", "ffn_act", "ffn_down",
        "residual_add", "lm_head", "comm", "host"}


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def smallest_tp(model, hw):
    for tp in (1, 2, 4, 8, 16, 32, 64):
        if tp > hw.total_devices or model.num_attention_heads % tp:
            continue
        if model.kv_heads % tp and tp % model.kv_heads:
            continue
        if footprint(model, hw, tp=tp, dt=Dtypes.of(model)).kv_capacity_tokens > 2 * 1025:  # its own format
            return tp
    return None


def test_every_preset_model_on_every_preset_device(capsys):
    answered = 0
    for hw_name in hw_presets():
        hw = load_hardware(hw_name)
        for m_name in model_presets():
            tp = smallest_tp(load_model(m_name), hw)
            args = ["step", "--model", m_name, "--hardware", hw_name, "--decode", "2x1024", "--json"]
            if tp is None:  # too big for this part at any tp: a one-line exit 2
                rc, out, err = run(capsys, *args)
                assert rc == 2 and err.count("\n") == 1 and "needs" in err
                continue
            rc, out, err = run(capsys, *args, "--tp", str(tp))
            assert rc == 0, err
            d = json.loads(out)
            assert d["step_ms"] > 0 and d["device_ms"] > 0 and d["host_ms"] >= 0
            assert set(d["breakdown_ms"]) == KEYS
            assert sum(d["breakdown_ms"].values()) == pytest.approx(d["step_ms"], rel=1e-4)
            answered += 1
    assert answered >= 90


def test_contract_example_via_console_script():
    out = subprocess.run(["momentsim", "step", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode",
                          "16x4096", "--prefill", "1x512", "--json"], capture_output=True, text=True, check=True)
    d = json.loads(out.stdout)
    assert d["breakdown_ms"]["attention"] > 0 and d["step_ms"] >= d["device_ms"]


@pytest.mark.parametrize("args, needle", [
    (["--model", "nope", "--hardware", "h100-sxm", "--decode", "1x1"], "known presets"),
    (["--model", "llama-3-8b", "--hardware", "nope", "--decode", "1x1"], "known: "),
    (["--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode", "0x10"], ">= 1"),
    (["--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode", "4x-5"], ">= 1"),
    (["--model", "llama-3-8b", "--hardware", "h100-sxm", "--prefill", "abc"], "BxLEN"),
    (["--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode", "1x1", "--tp", "3"], "divide"),
    (["--model", "llama-3-8b", "--hardware", "h100-sxm"], "at least one"),
    (["--model", "llama-3-70b", "--hardware", "h100-sxm", "--decode", "1x1"], "would fit with tp >= "),
    (["--model", "llama-3-8b", "--hardware", "h100-sxm", "--decode", "1x1", "--tp", "16"], "devices"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    rc, out, err = run(capsys, "step", *args, "--json")
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_malformed_config_json(tmp_path, capsys):
    p = tmp_path / "config.json"
    p.write_text('{"hidden_size": 4096,')
    rc, _, err = run(capsys, "step", "--model", str(p), "--hardware", "h100-sxm", "--decode", "1x1")
    assert rc == 2 and str(p) in err and err.count("\n") == 1


def test_argparse_errors_are_one_line():
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "step", "--model"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_memory_command(capsys):
    rc, out, _ = run(capsys, "memory", "--model", "llama-3-8b", "--hardware", "h100-sxm", "--json")
    d = json.loads(out)
    assert rc == 0 and d["params_b"] == pytest.approx(8.03, abs=0.01) and d["kv_bytes_per_token"] == 131072
