"""Fuzz every file the tool reads: whatever is in it, loading either succeeds or raises an
InputError whose message is one line naming the file; never a traceback of another kind.

Runs the loader functions directly (not the CLI in a subprocess) so each example costs
microseconds. Inputs are of three kinds: garbage bytes, random mappings of random values,
and a valid file with one field replaced, removed or added (which reaches the validators).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hwmodels.errors import InputError
from hwmodels.load import PRESET_DIR, load_hardware, read_profile
from hwmodels.profile import SCHEMA
from simulator.moment.model import PRESET_DIR as MODEL_DIR
from simulator.moment.model import load_model
from simulator.serving.scenario import load_scenario

# FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_inputs.py digs deeper than the default run
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_ids = itertools.count()  # the loaders cache by path: every example gets a new file name

# -- strategies ----------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["", "0", "-1", "1e400", "nan", "fixed", "trace", "h100-sxm", "llama-3.2-1b",
                              "bf16", "graph", "poisson", "~", "[", "{a: 1}"]))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                     max_size=4),
                      max_leaves=12)


def leaves(d: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every key in a nested mapping (to pick one to mutate)."""
    out: list[tuple] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out.append(prefix + (k,))
            out.extend(leaves(v, prefix + (k,)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with one key's value replaced, the key removed, or a new key added beside it."""
    data = json.loads(json.dumps(base))
    path = draw(st.sampled_from(leaves(data)))
    parent = data
    for k in path[:-1]:
        parent = parent[k]
    op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if op == "replace":
        parent[path[-1]] = draw(values)
    elif op == "delete":
        del parent[path[-1]]
    else:
        parent[draw(st.text(min_size=1, max_size=10))] = draw(values)
    return data


def contents(base: dict[str, Any], as_json: bool = False) -> st.SearchStrategy[bytes]:
    """Garbage bytes, random mappings, or a mutated valid file, serialised as YAML or JSON."""
    dump = (lambda d: json.dumps(d).encode()) if as_json else \
        (lambda d: yaml.safe_dump(d, allow_unicode=True).encode())
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.dictionaries(st.text(max_size=10), values, max_size=6).map(dump),
        values.map(dump),
        mutated(base).map(dump),
        mutated(base).map(dump),
        mutated(base).map(dump),
    )


def expect_ok_or_one_line(load: Any, path: Path) -> None:
    try:
        load(str(path))
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and "\r" not in msg, msg
        assert str(path) in msg, msg


def write(tmp: Path, suffix: str, data: bytes) -> Path:
    p = tmp / f"f{next(_ids)}{suffix}"
    p.write_bytes(data)
    return p


# -- the files -----------------------------------------------------------------------------------
SCENARIO = {
    "model": "llama-3.2-1b", "hardware": "h100-sxm",
    "serving": {"scheduler": "continuous", "max_batch_size": 8, "tp": 1, "replicas": 1, "mode": "graph"},
    "workload": {"num_requests": 5, "arrival": {"process": "poisson", "rate": 2.0},
                 "prompt_len": {"dist": "uniform", "low": 10, "high": 20},
                 "output_len": {"dist": "lognormal", "mean": 10, "sigma": 0.5}},
    "slo": {"ttft_ms": 100, "p99_tpot_ms": 50}, "seed": 0,
}


def _load_and_check_scenario(path: str) -> None:
    """What `momentsim run` does before simulating: the file, then model/hardware/tp/memory."""
    from simulator.reports.run import check_scenario

    check_scenario(load_scenario(path), path)


@FUZZ
@given(data=contents(SCENARIO))
@example(data=b'"a\\nb": 1\nmodel: llama-3.2-1b\nhardware: h100-sxm\n')  # a field name with a newline
def test_scenario_yaml(tmp_path: Path, data: bytes) -> None:
    expect_ok_or_one_line(_load_and_check_scenario, write(tmp_path, ".yaml", data))


HARDWARE = yaml.safe_load((PRESET_DIR / "h100-sxm.yaml").read_text())
WHATIF = {"base": "h100-sxm", "name": "h100-2x-bw", "device": {"memory_bw_gbps": 6700, "memory_gb": 80}}


@FUZZ
@given(data=contents(HARDWARE) | contents(WHATIF))
@example(data=b'base: h100-sxm\n"\\r": 1\n')
def test_hardware_yaml(tmp_path: Path, data: bytes) -> None:
    expect_ok_or_one_line(load_hardware, write(tmp_path, ".yaml", data))


MODEL = json.loads((MODEL_DIR / "mixtral-8x7b.json").read_text())


@FUZZ
@given(data=contents(MODEL, as_json=True))
def test_model_config_json(tmp_path: Path, data: bytes) -> None:
    d = tmp_path / f"m{next(_ids)}"
    d.mkdir()
    p = d / "config.json"
    p.write_bytes(data)
    expect_ok_or_one_line(load_model, p)


PROFILE = {"schema": SCHEMA, "hardware": load_hardware("h100-sxm").model_dump(mode="json"),
           "fingerprint": {"name": "NVIDIA H100 80GB HBM3", "sm": 132}, "provenance": {"gemm_compute": "fit"},
           "fit": {"cases": 10}, "measurements": [{"op": "gemm", "ms": 1.0}]}


@FUZZ
@given(data=contents(PROFILE, as_json=True))
def test_profile_json(tmp_path: Path, data: bytes) -> None:
    expect_ok_or_one_line(read_profile, write(tmp_path, ".json", data))
    # a profile is also a --hardware argument
    expect_ok_or_one_line(load_hardware, write(tmp_path, ".json", data))


# -- traces --------------------------------------------------------------------------------------
cells = st.one_of(st.integers(-5, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", " ", "x", "1.5", "-0", "2023-11-16 18:15:46.68", "1e999", '"', "\t"]),
                  st.text(max_size=6))
columns = st.lists(st.sampled_from(["arrival_s", "prompt_len", "output_len", "TIMESTAMP", "ContextTokens",
                                    "GeneratedTokens", "other", ""]) | st.text(max_size=6),
                   min_size=0, max_size=5)


@st.composite
def csv_traces(draw: st.DrawFn) -> bytes:
    header = draw(columns)
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=len(header) + 1), max_size=6))
    lines = [",".join(header)] + [",".join(r) for r in rows]
    return "\n".join(lines).encode()


@st.composite
def jsonl_traces(draw: st.DrawFn) -> bytes:
    keys = st.sampled_from(["arrival_s", "prompt_len", "output_len", "TIMESTAMP", "x"]) | st.text(max_size=5)
    objs = draw(st.lists(st.dictionaries(keys, values, max_size=4) | values, max_size=5))
    lines = [json.dumps(o) for o in objs] + draw(st.lists(st.text(max_size=10), max_size=1))
    return "\n".join(lines).encode()


VALID_CSV = b"arrival_s,prompt_len,output_len\n0.0,10,5\n0.5,20,1\n"


@FUZZ
@given(data=csv_traces() | st.binary(max_size=200) | st.just(VALID_CSV), suffix=st.sampled_from([".csv", ".txt"]))
def test_trace_csv(tmp_path: Path, data: bytes, suffix: str) -> None:
    from simulator.serving.workload import read_trace

    expect_ok_or_one_line(read_trace, write(tmp_path, suffix, data))


@FUZZ
@given(data=jsonl_traces() | st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json"]))
@example(data=b'{"arrival_s": []}', suffix=".jsonl")  # a list where a number belongs
def test_trace_jsonl(tmp_path: Path, data: bytes, suffix: str) -> None:
    from simulator.serving.workload import read_trace

    expect_ok_or_one_line(read_trace, write(tmp_path, suffix, data))


def test_valid_files_load(tmp_path: Path) -> None:
    """The bases of the mutations are themselves valid (else the fuzz tests only errors)."""
    from simulator.serving.workload import read_trace

    _load_and_check_scenario(str(write(tmp_path, ".yaml", yaml.safe_dump(SCENARIO).encode())))
    load_hardware(str(write(tmp_path, ".yaml", yaml.safe_dump(WHATIF).encode())))
    read_profile(str(write(tmp_path, ".json", json.dumps(PROFILE).encode())))
    assert read_trace(str(write(tmp_path, ".csv", VALID_CSV))).output_len.tolist() == [5, 1]
    d = tmp_path / "mixtral"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(MODEL))
    assert load_model(str(d / "config.json")).is_moe


@pytest.mark.parametrize("text", ["a:\n  - b\n c", "{", "\x00\x01", "- 1\n- 2", "model: [", ":"])
def test_known_bad_yaml(tmp_path: Path, text: str) -> None:
    expect_ok_or_one_line(load_scenario, write(tmp_path, ".yaml", text.encode()))


# -- sweep and plan files ------------------------------------------------------------------------
SWEEP = {"name": "fz", "base": {"model": "llama-3.2-1b", "hardware": "h100-sxm",
                                "workload": {"num_requests": 5, "arrival": {"process": "poisson", "rate": 2.0}}},
         "grid": {"serving.max_batch_size": [8, 16], "workload.arrival.rate": {"from": 1, "to": 4, "steps": 3}},
         "points": [{"hardware": "h200-sxm"}]}
PLAN = {"name": "fz", "model": "llama-3.2-1b",
        "workload": {"num_requests": 50, "arrival": {"process": "poisson", "rate": 5.0},
                     "prompt_len": {"dist": "fixed", "value": 100}, "output_len": {"dist": "fixed", "value": 20}},
        "slo": {"p99_ttft_ms": 500, "p99_tpot_ms": 50},
        "candidates": [{"hardware": "h100-sxm"}, {"hardware": "l4", "price_per_hour": 0.7}],
        "search": {"tp": [1, 2], "max_batch_size": [32]}}


@FUZZ
@given(data=contents(SWEEP))
def test_sweep_yaml(tmp_path: Path, data: bytes) -> None:
    from simulator.studies.sweep import load_sweep

    expect_ok_or_one_line(load_sweep, write(tmp_path, ".yaml", data))


@FUZZ
@given(data=contents(PLAN))
def test_plan_yaml(tmp_path: Path, data: bytes) -> None:
    from simulator.studies.plan_schema import load_plan

    expect_ok_or_one_line(load_plan, write(tmp_path, ".yaml", data))


@FUZZ
@given(data=csv_traces() | jsonl_traces() | st.binary(max_size=200), suffix=st.sampled_from([".csv", ".jsonl"]),
       which=st.sampled_from(["prompt_len", "output_len"]))
def test_length_file(tmp_path: Path, data: bytes, suffix: str, which: str) -> None:
    from simulator.serving.workload import read_lengths

    expect_ok_or_one_line(lambda p: read_lengths(p, which), write(tmp_path, suffix, data))
