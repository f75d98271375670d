"""Workload generation: distributions match their parameters, traces load, bad traces say why."""

import math
from pathlib import Path

import numpy as np
import pytest

from hwmodels.errors import InputError
from simulator.serving.scenario import Workload
from simulator.serving.workload import make_requests, read_lengths


def wl(**kw) -> Workload:
    return Workload.model_validate(kw)


def test_poisson_gaps_have_mean_and_cv_of_exponential():
    r = make_requests(wl(num_requests=50_000, arrival={"process": "poisson", "rate": 4.0}), seed=3)
    gaps = np.diff(np.concatenate(([0.0], r.arrival_s)))
    assert gaps.mean() == pytest.approx(0.25, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)
    assert np.all(np.diff(r.arrival_s) >= 0)


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_gaps_have_requested_mean_and_cv(cv):
    r = make_requests(wl(num_requests=50_000, arrival={"process": "gamma", "rate": 10.0, "cv": cv}), seed=1)
    gaps = np.diff(np.concatenate(([0.0], r.arrival_s)))
    assert gaps.mean() == pytest.approx(0.1, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_burst_all_at_zero_and_fixed_lengths():
    r = make_requests(wl(num_requests=7, arrival={"process": "burst"},
                         prompt_len={"dist": "fixed", "value": 33}, output_len={"dist": "fixed", "value": 5}), 0)
    assert len(r) == 7 and np.all(r.arrival_s == 0)
    assert np.all(r.prompt_len == 33) and np.all(r.output_len == 5)
    assert np.all(r.prefix_id == -1) and np.all(r.prefix_len == 0)
    assert r.prompt_len.dtype == np.int32 and r.arrival_s.dtype == np.float64  # lengths <= MAX_TOKENS


def test_uniform_is_inclusive_integers():
    r = make_requests(wl(num_requests=20_000, prompt_len={"dist": "uniform", "low": 3, "high": 6}), 0)
    assert set(np.unique(r.prompt_len).tolist()) == {3, 4, 5, 6}
    assert r.prompt_len.mean() == pytest.approx(4.5, rel=0.02)


def test_lognormal_mean_in_tokens_and_sigma_of_log():
    r = make_requests(wl(num_requests=100_000, prompt_len={"dist": "lognormal", "mean": 1000, "sigma": 0.5}), 2)
    assert r.prompt_len.mean() == pytest.approx(1000, rel=0.01)
    assert np.log(r.prompt_len).std() == pytest.approx(0.5, rel=0.02)
    # the median of a lognormal is exp(mu) = mean * exp(-sigma^2/2)
    assert np.median(r.prompt_len) == pytest.approx(1000 * math.exp(-0.125), rel=0.02)


def test_lognormal_clipped_to_max_and_at_least_one():
    r = make_requests(wl(num_requests=5000, output_len={"dist": "lognormal", "mean": 5, "sigma": 3, "max": 50}), 0)
    assert r.output_len.min() >= 1 and r.output_len.max() == 50


def test_same_seed_same_requests_other_seed_differs():
    w = wl(num_requests=100, arrival={"process": "poisson", "rate": 1.0},
           prompt_len={"dist": "lognormal", "mean": 100, "sigma": 1.0})
    a, b, c = make_requests(w, 5), make_requests(w, 5), make_requests(w, 6)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_len, b.prompt_len)
    assert not np.array_equal(a.arrival_s, c.arrival_s)


def test_shared_prefixes():
    r = make_requests(wl(num_requests=20_000, prompt_len={"dist": "uniform", "low": 10, "high": 400},
                         prefix={"groups": 3, "length": 200, "fraction": 0.25}), 0)
    has = r.prefix_id >= 0
    assert has.mean() == pytest.approx(0.25, abs=0.01)
    assert set(np.unique(r.prefix_id[has]).tolist()) == {0, 1, 2}
    assert np.all(r.prefix_len[has] == 200) and np.all(r.prefix_len[~has] == 0)
    assert np.all(r.prompt_len[has] >= 201)  # the prefix plus at least one token of its own
    assert r.prompt_len[~has].min() == 10


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_csv_trace_rebased_scaled_first_n(tmp_path):
    path = write(tmp_path, "t.csv", "arrival_s,prompt_len,output_len\n10,5,6\n12.5,7,8\n11,9,10\n20,1,1\n")
    w = wl(num_requests=3, arrival={"process": "trace", "path": path, "time_scale": 2.0},
           prompt_len={"dist": "trace"}, output_len={"dist": "trace"})
    r = make_requests(w, 0)
    assert r.arrival_s.tolist() == [0.0, 2.0, 5.0]  # first 3 rows, from 0, x2, sorted
    assert r.prompt_len.tolist() == [5, 9, 7] and r.output_len.tolist() == [6, 10, 8]


def test_trace_times_with_sampled_lengths(tmp_path):
    path = write(tmp_path, "t.csv", "arrival_s\n0\n1\n2\n")
    r = make_requests(wl(num_requests=10, arrival={"process": "trace", "path": path},
                         prompt_len={"dist": "fixed", "value": 4}), 0)
    assert len(r) == 3 and r.prompt_len.tolist() == [4, 4, 4]  # fewer rows than num_requests: all rows


def test_azure_trace_layout_with_datetimes(tmp_path):
    path = write(tmp_path, "AzureLLMInferenceTrace_conv.csv",
                 "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.5301600,396,109\n"
                 "2023-11-16 18:16:46.6805900,879,0\n")
    r = make_requests(wl(num_requests=10, arrival={"process": "trace", "path": path},
                         prompt_len={"dist": "trace"}, output_len={"dist": "trace"}), 0)
    assert r.arrival_s == pytest.approx([0.0, 3.84957, 60.0])
    assert r.prompt_len.tolist() == [374, 396, 879]
    assert r.output_len.tolist() == [44, 109, 1]  # zero generated tokens still yields one


def test_azure_trace_seconds_and_jsonl(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"TIMESTAMP": 5.5, "ContextTokens": 10, "GeneratedTokens": 3}\n\n'
                 '{"TIMESTAMP": 7, "ContextTokens": 20, "GeneratedTokens": 4}\n')
    r = make_requests(wl(num_requests=10, arrival={"process": "trace", "path": path},
                         prompt_len={"dist": "trace"}, output_len={"dist": "trace"}), 0)
    assert r.arrival_s.tolist() == [0.0, 1.5] and r.prompt_len.tolist() == [10, 20]


@pytest.mark.parametrize("text,field,needle", [
    ("arrival_s,prompt_len,output_len\n0,5,6\n1,x,2\n", "prompt_len (line 3)", "'x'"),
    ("arrival_s,prompt_len,output_len\n0,5,6\n-1,4,2\n", "arrival_s (line 3)", ">= 0"),
    ("arrival_s,prompt_len,output_len\n0,5,6\n1,4,-2\n", "output_len (line 3)", ">= 0"),
    ("arrival_s,prompt_len,output_len\n0,5.5,6\n", "prompt_len (line 2)", "integer"),
    ("when,prompt_len,output_len\n0,5,6\n", "arrival_s", "TIMESTAMP"),
    ("arrival_s,prompt_len,output_len\n", "", "empty"),
    ("", "", "empty"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\nyesterday,3,4\n", "TIMESTAMP (line 3)",
     "date-time"),
])
def test_bad_trace_is_one_line_input_error(tmp_path, text, field, needle):
    path = write(tmp_path, "bad.csv", text)
    w = wl(num_requests=10, arrival={"process": "trace", "path": path},
           prompt_len={"dist": "trace"}, output_len={"dist": "trace"})
    with pytest.raises(InputError) as e:
        make_requests(w, 0)
    assert e.value.where == path and e.value.field == field
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_length_column_and_missing_file(tmp_path):
    path = write(tmp_path, "t.csv", "arrival_s,prompt_len\n0,5\n")
    w = wl(num_requests=10, arrival={"process": "trace", "path": path}, output_len={"dist": "trace"})
    with pytest.raises(InputError, match="GeneratedTokens.*missing column"):
        make_requests(w, 0)
    w = wl(num_requests=10, arrival={"process": "trace", "path": str(tmp_path / "nope.csv")})
    with pytest.raises(InputError, match="not found"):
        make_requests(w, 0)


def test_bad_jsonl_line(tmp_path):
    path = write(tmp_path, "t.jsonl", '{"arrival_s": 0, "prompt_len": 1, "output_len": 1}\n[1, 2]\n')
    w = wl(num_requests=10, arrival={"process": "trace", "path": path})
    with pytest.raises(InputError, match="line 2"):
        make_requests(w, 0)


def test_trace_lengths_need_a_trace():
    with pytest.raises(InputError, match="workload.prompt_len"):
        make_requests(wl(num_requests=3, prompt_len={"dist": "trace"}), 0, where="s.yaml")


def test_empirical_pairs_come_from_one_row_each_without_replacement(tmp_path):
    rows = [(p, 1000 + p) for p in range(1, 51)]  # output = 1000 + prompt: a pair is recognisable
    f = tmp_path / "pairs.csv"
    f.write_text("prompt_len,output_len\n" + "\n".join(f"{p},{o}" for p, o in rows) + "\n")
    emp = {"dist": "empirical", "path": str(f)}
    r = make_requests(wl(num_requests=120, prompt_len=emp, output_len=emp), seed=2)
    assert np.all(r.output_len == 1000 + r.prompt_len)
    # 120 requests of 50 rows: every row twice in the first 100, then 20 of a third shuffle
    counts = np.bincount(r.prompt_len, minlength=51)[1:]
    assert set(counts.tolist()) <= {2, 3} and counts.sum() == 120 and (counts == 3).sum() == 20
    assert sorted(r.prompt_len[:50].tolist()) == list(range(1, 51))
    one = make_requests(wl(num_requests=50, prompt_len=emp, output_len={"dist": "fixed", "value": 7}), seed=2)
    assert sorted(one.prompt_len.tolist()) == list(range(1, 51)) and set(one.output_len.tolist()) == {7}


def test_the_committed_sharegpt_like_files_have_the_stated_means():
    d = Path(__file__).resolve().parent.parent / "scenarios" / "published" / "lengths"
    qwen = d / "sharegpt-qwen3-chat.csv"
    assert read_lengths(str(qwen), "prompt_len").sum() == 23_260  # R43-R45: 100 requests
    assert read_lengths(str(qwen), "output_len").sum() == 22_061
    llama = d / "sharegpt-llama3.csv"
    out = read_lengths(str(llama), "output_len")
    assert out.mean() == pytest.approx(194.0) and np.median(out) == pytest.approx(119, abs=5)
    p = read_lengths(str(llama), "prompt_len")
    assert p.max() <= 1024 and np.all(p + out <= 2048) and p.min() >= 4 and out.min() >= 4  # the clients' filters


def test_bad_length_file_is_one_line(tmp_path):
    f = tmp_path / "l.csv"
    f.write_text("prompt_len,output_len\n5,0\n")
    with pytest.raises(InputError, match="output_len .line 2."):
        make_requests(wl(output_len={"dist": "empirical", "path": str(f)}), seed=0)
    g = tmp_path / "other.csv"
    g.write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="missing column"):
        make_requests(wl(prompt_len={"dist": "empirical", "path": str(g)}), seed=0)


def test_a_length_file_given_by_set_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    from simulator.serving.scenario import load_scenario

    d = tmp_path / "here"
    d.mkdir()
    (d / "l.csv").write_text("prompt_len,output_len\n7,3\n")
    sc = tmp_path / "s.yaml"
    sc.write_text("model: llama-3.2-1b\nhardware: h100-sxm\n")
    monkeypatch.chdir(d)
    s = load_scenario(sc, ["workload.prompt_len={dist: empirical, path: l.csv}"])
    assert s.workload.prompt_len.path == str(d / "l.csv")
