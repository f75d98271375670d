"""Fuzz every file the tool reads: whatever is in it, loading either succeeds or raises an
InputError whose message is one line naming the file; never a traceback of another kind.

Runs the loader functions directly (not the CLI in a subprocess) so each example costs
microseconds. Inputs are of three kinds: garbage bytes, random mappings of random values,
and a valid file with one field replaced, removed or added (which reaches the validators).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from hwmodels.errors import InputError
from hwmodels.load import PRESET_DIR, load_hardware, read_profile
from hwmodels.profile import SCHEMA
from hwmodels.spec import Hardware
from simulator.moment.model import PRESET_DIR as MODEL_DIR
from simulator.moment.model import ModelSpec, _spec, load_model
from simulator.serving.scenario import Scenario, load_scenario

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


# -- every numeric field of every schema, with every kind of hostile value --------------------------
# The fields are found by walking the pydantic schemas (model_fields), not listed by hand, so a
# field added tomorrow is fuzzed too. Each hostile value goes into a valid base file in place of
# one field; all cases then run as the CLI runs them (simulator.cli.main: `run --json` for
# scenario, hardware and model files; load_sweep/load_plan for sweeps and plans, whose running is
# not an input question) in one child process under an address-space limit and a time limit. A
# case ends either in exit 2 with one line naming the file and the field, or, where the value is
# physically allowed, in a run whose every request is accounted for and whose numbers are finite.
NUMBER_TYPES = (int, float)
HOSTILE: dict[str, Any] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "zero": 0, "negative": -1,
                           "huge": 1e300, "huge_int": 2**64, "bool": True, "string": "1", "list": [1],
                           "alias": "<alias>"}
HOLE = "__hostile_value__"  # where a case's value goes in the text of a base file dumped once per field


def _strip(ann: Any) -> Any:
    while get_origin(ann) is Annotated:
        ann = get_args(ann)[0]
    return ann


def _options(ann: Any) -> list[Any]:
    """The alternatives of an annotation, through Annotated and unions (None dropped)."""
    ann = _strip(ann)
    if get_origin(ann) in (Union, UnionType):
        return [o for a in get_args(ann) for o in _options(a) if o is not type(None)]
    return [ann]


def _leaf_kind(ann: Any) -> str | None:
    """'number', 'dict' (of numbers), 'list' (of numbers) or None."""
    for o in _options(ann):
        if o in NUMBER_TYPES:
            return "number"
        if get_origin(o) is dict and _leaf_kind(get_args(o)[1]) == "number":
            return "dict"
        if get_origin(o) is list and _leaf_kind(get_args(o)[0]) == "number":
            return "list"
    return None


def _submodels(ann: Any) -> list[type[BaseModel]]:
    out = []
    for o in _options(ann):
        if isinstance(o, type) and issubclass(o, BaseModel):
            out.append(o)
        elif get_origin(o) is list:
            out += _submodels(get_args(o)[0])
    return out


def models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """Every pydantic model reachable from `root` through its fields, once each."""
    todo, done = [root], []
    while todo:
        m = todo.pop()
        if m not in done:
            done.append(m)
            todo += [s for f in m.model_fields.values() for s in _submodels(f.annotation)]
    return done


def numeric_fields(root: type[BaseModel]) -> set[str]:
    """Model.field of every numeric field reachable from `root`."""
    return {f"{m.__name__}.{name}" for m in models(root) for name, f in m.model_fields.items()
            if _leaf_kind(f.annotation)}


def _pick(models: list[type[BaseModel]], data: dict[str, Any]) -> type[BaseModel] | None:
    """The model of a union that `data` is (by its `dist`/`process` literal, else by its keys)."""
    for m in models:
        ok = m.model_config.get("extra") == "ignore" or all(
            k in m.model_fields or any(f.alias == k for f in m.model_fields.values()) for k in data)
        disc = m.model_fields.get("dist")
        if disc is not None:
            ok = ok and data.get("dist") in get_args(disc.annotation)
        if ok:
            return m
    return None


def _keys(name: str, f: Any) -> list[str]:
    """The names a field may have in a file: its alias or name, then its validation aliases."""
    va = getattr(f.validation_alias, "choices", None) or []
    return [f.alias or name] + [k for k in va if isinstance(k, str)]


def targets(model: type[BaseModel], data: dict[str, Any], path: tuple = (),
            present_only: bool = False) -> list[tuple[tuple, str, str]]:
    """(path into data, leaf kind, Model.field) of every numeric field the base data reaches;
    present_only: only fields the data holds (a model config is read by its family, which
    refuses fields it does not model)."""
    out = []
    for name, f in model.model_fields.items():
        keys = _keys(name, f)
        key = next((k for k in keys if k in data), None if present_only else keys[0])
        if key is None:
            continue
        kind = _leaf_kind(f.annotation)
        if kind:
            out.append((path + (key,), kind, f"{model.__name__}.{name}"))
        sub, val = _submodels(f.annotation), data.get(key)
        if isinstance(val, list) and val and isinstance(val[0], dict):
            sub_data, sub_path = val[0], path + (key, 0)
        else:
            sub_data, sub_path = val, path + (key,)
        if sub and isinstance(sub_data, dict):
            m = _pick(sub, sub_data)
            if m is not None:
                out += targets(m, sub_data, sub_path, present_only)
    return out


def inject(base: dict[str, Any], path: tuple, kind: str, value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(base))
    cur: Any = data
    for k in path[:-1]:
        cur = cur[k]
    if isinstance(value, str) and value == "<alias>":  # another mapping of the file: YAML writes &id001 / *id001
        value = next(v for k, v in data.items() if isinstance(v, dict) and k != path[0])
    old = cur.get(path[-1]) if isinstance(cur, dict) else None
    if kind == "dict":
        key = next(iter(old)) if isinstance(old, dict) and old else "norm"
        value = {key: value}
    elif kind == "list":
        value = [value]
    cur[path[-1]] = value
    return data


def _dump(data: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(data)  # JSON has no aliases: a shared mapping is written out twice
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
FUZZ_SCENARIO = {
    "model": "llama-3.2-1b", "hardware": "h100-sxm",
    "serving": {"scheduler": "chunked", "max_batch_size": 8, "max_batched_tokens": 64, "tp": 1, "pp": 1,
                "replicas": 1, "block_size": 16, "gpu_memory_utilization": 0.9, "activation_reserve_gb": 1.0,
                "max_queue": 100,
                "overheads": {"request_in_ms": 1.0, "request_out_ms": 1.0, "step_us": 100.0, "step_seq_us": 1.0}},
    "workload": {"num_requests": 4, "arrival": {"process": "gamma", "rate": 20.0, "cv": 1.0},
                 "prompt_len": {"dist": "uniform", "low": 8, "high": 16},
                 "output_len": {"dist": "lognormal", "mean": 4, "sigma": 0.5, "max": 8},
                 "prefix": {"groups": 1, "length": 4, "fraction": 0.5}},
    "slo": {"ttft_ms": 100, "tpot_ms": 50, "e2e_ms": 1000, "p99_ttft_ms": 100, "p99_tpot_ms": 50},
    "seed": 0,
}
# the serving designs (issue 14): request classes and priorities, a CPU KV tier, speculative
# decoding, disaggregated prefill and decode, in one scenario
FUZZ_DESIGNS = {**FUZZ_SCENARIO, "serving": {
    **FUZZ_SCENARIO["serving"], "queue": "priority", "priority_preemption": True,
    "kv_offload": {"cpu_gb": 1.0, "pcie_gbps": 25.0},
    "speculative": {"method": "heads", "head_layers": 1.0, "k": 2, "acceptance": 0.5},
    "disaggregated": {"prefill": {"tp": 1, "pp": 1, "replicas": 1, "max_batch_size": 8, "max_batched_tokens": 64},
                      "decode": {"tp": 1, "pp": 1, "replicas": 1, "max_batch_size": 8, "max_batched_tokens": 64},
                      "transfer": {"bw_gbps": 50.0, "latency_us": 5.0}}},
    "workload": {**FUZZ_SCENARIO["workload"], "classes": [
        {"name": "a", "share": 0.5, "priority": 0, "slo": {"ttft_ms": 100, "tpot_ms": 50, "e2e_ms": 1000}},
        {"name": "b", "share": 0.5, "priority": 1}]}}
FUZZ_TRACE_SCENARIO = {**FUZZ_SCENARIO, "workload": {
    "num_requests": 4, "arrival": {"process": "trace", "path": "trace.csv", "time_scale": 1.0},
    "prompt_len": {"dist": "fixed", "value": 8}, "output_len": {"dist": "trace"}}}
FUZZ_HARDWARE = {k: v for k, v in load_hardware("h100-sxm").model_dump(mode="json").items()
                 if k not in ("profile", "sources")}
FUZZ_HARDWARE["efficiency"].update(gemv_memory=0.9, wide_gemm_n=8192, wide_gemm_memory=0.5)


def _config(name: str, **over: Any) -> dict[str, Any]:
    """A preset's config as a user's file holds it (a wrapper's text model), with changes."""
    d = json.loads((MODEL_DIR / f"{name}.json").read_text())
    d = {k: v for k, v in d.get("text_config", d).items() if not k.startswith("_")}
    return {**d, **over}


# one config per family that holds its own fields; small enough to simulate on one H100
FUZZ_MODELS = [
    _config("llama-3.2-1b"), _config("qwen1.5-moe-a2.7b"), _config("gemma-3-1b"), _config("gpt-oss-20b"),
    _config("deepseek-v2-lite", quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]}),
    _config("llama-4-scout", num_hidden_layers=4, no_rope_layers=[1, 1, 1, 0], moe_layers=[1, 3]),
    _config("qwen2.5-7b-awq"),
]
FUZZ_SWEEP = {"base": {**FUZZ_SCENARIO, "seed": 0}, "grid": {"workload.arrival.rate": {"from": 1, "to": 4, "steps": 2}},
              "seeds": [0]}
FUZZ_PLAN = {**PLAN, "candidates": [{"hardware": "h100-sxm", "price_per_hour": 4.0}],
             "search": {"tp": [1], "pp": [1], "replicas": [1], "max_replicas": 2, "max_batch_size": [32]},
             "slo": {"p99_ttft_ms": 500, "p99_tpot_ms": 50, "goodput": 0.9, "ttft_ms": 500, "tpot_ms": 50},
             "seed": 0, "rate_steps": 2, "electricity_usd_per_kwh": 0.1}


def _schema_cases(tmp: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """Every (numeric field, hostile value) case as files under tmp, and the fields covered."""
    from simulator.studies.plan_schema import Plan
    from simulator.studies.sweep_schema import Sweep

    (tmp / "trace.csv").write_text("arrival_s,prompt_len,output_len\n0,8,2\n0.1,9,3\n0.2,10,1\n")
    cases, covered = [], set()

    def scenario_with(**over: Any) -> Path:
        p = tmp / f"s{next(_ids)}.yaml"
        p.write_text(_dump({**FUZZ_SCENARIO, **over}, False))
        return p

    plan: list[tuple[type[BaseModel], dict[str, Any], str, str]] = [
        (Scenario, FUZZ_SCENARIO, "scenario", ".yaml"), (Scenario, FUZZ_TRACE_SCENARIO, "scenario", ".yaml"),
        (Scenario, FUZZ_DESIGNS, "scenario", ".yaml"),
        (Hardware, FUZZ_HARDWARE, "hardware", ".yaml"), *((ModelSpec, m, "model", ".json") for m in FUZZ_MODELS),
        (Sweep, FUZZ_SWEEP, "sweep", ".yaml"), (Plan, FUZZ_PLAN, "plan", ".yaml"),
    ]
    for model, base, kind, suffix in plan:
        for path, leaf, name in targets(model, base, present_only=model is ModelSpec):
            if name in covered:  # a field the bases share is fuzzed in the first that holds it
                continue
            covered.add(name)
            as_json = suffix == ".json"
            text = _dump(inject(base, path, leaf, HOLE), as_json)
            for label, value in HOSTILE.items():
                if label == "alias":
                    if as_json:
                        continue  # JSON has no aliases
                    body = _dump(inject(base, path, leaf, value), as_json)
                else:
                    quoted = json.dumps(HOLE)
                    literal = yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]  # inline YAML
                    body = text.replace(quoted if as_json else HOLE, json.dumps(value) if as_json else literal)
                f = tmp / f"{kind}{next(_ids)}{suffix}"
                f.write_text(body)
                field = str(path[-1]) if not isinstance(path[-1], int) else str(path[-2])
                case = {"kind": kind, "file": str(f), "field": field, "label": label, "name": name}
                if kind == "hardware":
                    case["argv"] = ["run", str(scenario_with(hardware=str(f))), "--json"]
                elif kind == "model":
                    case["argv"] = ["run", str(scenario_with(model=str(f))), "--json"]
                elif kind == "scenario":
                    case["argv"] = ["run", str(f), "--json"]
                cases.append(case)
    return cases, covered


CHILD = r"""
import contextlib, functools, io, json, sys, time
from hwmodels.errors import InputError
import simulator.cli
from simulator.cli import main
simulator.cli.build_parser = functools.lru_cache(maxsize=1)(simulator.cli.build_parser)  # one parser, reused
from simulator.studies.plan_schema import load_plan
from simulator.studies.sweep import load_sweep

out = []
for case in json.load(open(sys.argv[1])):
    err, std = io.StringIO(), io.StringIO()
    t0 = time.process_time()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        if "argv" in case:
            rc = main(case["argv"])
        else:
            try:
                (load_sweep if case["kind"] == "sweep" else load_plan)(case["file"])
                rc = 0
            except InputError as e:  # what main prints for it
                print(f"momentsim: {e}", file=sys.stderr)
                rc = 2
    out.append({**case, "rc": rc, "err": err.getvalue(), "out": std.getvalue(), "cpu_s": time.process_time() - t0})
json.dump(out, open(sys.argv[2], "w"))
"""


def test_every_numeric_field_is_covered() -> None:
    """The bases reach every numeric field of every schema (else the matrix below misses one)."""
    from simulator.studies.plan_schema import Plan
    from simulator.studies.sweep_schema import Sweep

    want = set().union(*(numeric_fields(m) for m in (Scenario, Hardware, ModelSpec, Sweep, Plan)))
    got = set()
    for model, base in ((Scenario, FUZZ_SCENARIO), (Scenario, FUZZ_TRACE_SCENARIO), (Scenario, FUZZ_DESIGNS),
                        (Hardware, FUZZ_HARDWARE),
                        *((ModelSpec, m) for m in FUZZ_MODELS), (Sweep, FUZZ_SWEEP), (Plan, FUZZ_PLAN)):
        if model is ModelSpec:
            _spec(base, "fuzz", "fuzz")  # as a config file is read: by its family
        else:
            model.model_validate(base if model is not Scenario or base is FUZZ_SCENARIO else {**base, "workload": {
                **base["workload"], "arrival": {"process": "burst"}, "output_len": {"dist": "fixed", "value": 2}}})
        got |= {name for _, _, name in targets(model, base, present_only=model is ModelSpec)}
    assert want <= got, sorted(want - got)


def test_every_numeric_field_has_physical_bounds() -> None:
    """Finite (allow_inf_nan off), numbers only (strict), and a lower and an upper bound on each."""
    from simulator.studies.plan_schema import Plan
    from simulator.studies.sweep_schema import Sweep

    missing = []
    for m in {m for root in (Scenario, Hardware, ModelSpec, Sweep, Plan) for m in models(root)}:
        assert m.model_config.get("strict") and m.model_config.get("allow_inf_nan") is False, m.__name__
        for name, f in m.model_fields.items():
            if not _leaf_kind(f.annotation):
                continue
            metas = list(f.metadata)
            for o in _options(f.annotation):  # dict values and list items carry their own
                for a in get_args(o):
                    metas += [x for meta in getattr(a, "__metadata__", ()) for x in getattr(meta, "metadata", [meta])]
            lo = any(hasattr(x, "ge") or hasattr(x, "gt") for x in metas)
            hi = any(hasattr(x, "le") or hasattr(x, "lt") for x in metas)
            if not (lo and hi):
                missing.append(f"{m.__name__}.{name}")
    assert not missing, missing


def test_hostile_values_in_every_numeric_field(tmp_path: Path) -> None:
    cases, _ = _schema_cases(tmp_path)
    limit = 3 << 30

    def cap() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    root = Path(__file__).resolve().parent.parent
    children = []
    for k in range(2):  # two children, one per core of a 2-core CI machine
        manifest, out = tmp_path / f"cases{k}.json", tmp_path / f"results{k}.json"
        manifest.write_text(json.dumps(cases[k::2]))
        children.append((out, subprocess.Popen([sys.executable, "-c", CHILD, str(manifest), str(out)],
                                               stderr=subprocess.PIPE, text=True, preexec_fn=cap, cwd=tmp_path,
                                               env={**os.environ, "PYTHONPATH": str(root)})))
    results = []
    for out, child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        results += json.loads(out.read_text())
    assert len(results) == len(cases)
    bad = []
    accepted = 0
    for r in results:
        what = f"{r['name']}={r['label']} ({r['file']}): rc {r['rc']}: {r['err'][-300:]!r}"
        if r["cpu_s"] > 10:
            bad.append(f"slow {r['cpu_s']:.1f} s: {what}")
        if r["rc"] == 2:
            lines = r["err"].splitlines()
            if len(lines) != 1 or r["file"] not in lines[0] or r["field"] not in lines[0]:
                bad.append(f"not one line naming file and field: {what}")
        elif r["rc"] == 0 and r["label"] in ("zero", "negative"):
            accepted += 1
            if "argv" in r:
                s = json.loads(r["out"])
                req = s["requests"]
                if req["completed"] + req["rejected"] != req["arrived"] or not math.isfinite(s["makespan_s"]):
                    bad.append(f"accepted but not accounted for: {what}")
        else:
            bad.append(f"accepted a value no field allows: {what}")
    assert not bad, "\n".join(bad[:20]) + f"\n({len(bad)} of {len(cases)} cases)"
    assert accepted < len(cases) // 4  # most hostile values are refused
