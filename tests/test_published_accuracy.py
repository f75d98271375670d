"""The committed H100 profile predicts measurements the fit never saw.

Expected values are real H100 SXM measurements: Vidur's public per-op profiling,
calibration/data/published-h100/compute/h100/{meta-llama/Llama-2-70b-hf, internlm/internlm-20b,
microsoft/phi-2}/mlp.csv (median GPU time per op, fp16, tp 1-8, 1-4096 tokens; see that
directory's README.md). calibration/profiles/h100-sxm.json was fitted on three other models
(calibration/published.py), so these are held-out cases. Skipped where the data is absent.
"""

from __future__ import annotations

import numpy as np
import pytest

from calibration.fit import op_label, predict, rel_errors
from calibration.published import (
    FIT_MODELS,
    HELDOUT_MODELS,
    PROFILE_PATH,
    data_dir,
    layer_errors,
    mlp_files,
    mlp_records,
    read_mlp,
)
from hwmodels.load import load_hardware

ROOT = data_dir()


def test_published_data_is_in_the_repo() -> None:
    """The data ships with the repo (calibration/data): a fresh clone must not skip these tests."""
    assert (ROOT / "compute" / "h100").is_dir(), f"published H100 data not found at {ROOT}"

GEMMS = ("qkv_proj", "o_proj", "ffn_up", "ffn_down")
STREAMS = ("norm", "rope", "ffn_act", "residual_add", "embed")


@pytest.fixture(scope="module")
def held_out():
    files = mlp_files(ROOT)
    recs = [r for m in HELDOUT_MODELS for r in mlp_records(read_mlp(files[m], ROOT))]
    hw = load_hardware(str(PROFILE_PATH))
    err = rel_errors(predict(recs, hw), np.array([r["ms"] for r in recs]))
    return recs, err, hw


def test_held_out_models_are_not_fitted():
    assert not set(FIT_MODELS) & set(HELDOUT_MODELS)
    assert set(FIT_MODELS) | set(HELDOUT_MODELS) == set(mlp_files(ROOT))


@pytest.mark.parametrize("op", GEMMS + STREAMS)
def test_held_out_median_error_per_op_within_10_percent(held_out, op):
    recs, err, _ = held_out
    sel = np.array([op_label(r) == op for r in recs])
    assert sel.sum() > 2000
    med = float(np.median(np.abs(err[sel])))
    assert med <= 0.10, f"{op}: median |error| {med:.1%} on {sel.sum()} held-out cases"


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_held_out_gemms_per_tp_within_10_percent(held_out, tp):
    recs, err, _ = held_out
    sel = np.array([r["op"] == "gemm" and r["tp"] == tp for r in recs])
    assert float(np.median(np.abs(err[sel]))) <= 0.10


def test_held_out_whole_layers(held_out):
    """A layer's ops summed (no attention): the median within 5 %, every case within 30 %."""
    recs, _, hw = held_out
    _, pred, meas = layer_errors(recs, hw)
    e = np.abs(rel_errors(pred, meas))
    assert np.median(e) <= 0.05
    assert e.max() <= 0.30
