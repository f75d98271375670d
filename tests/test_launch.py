"""A serving stack's launches in the cost model (cost.Launch): CUDA graphs captured at some sizes
(a batch padded to the next size costs that size's dense ops and logits), eager steps above the
largest, exact sizes only without padding, piecewise graphs, and the stack's host work per step,
overlapped or not."""

import pytest

from hwmodels.load import load_hardware
from simulator.moment.cost import Launch, StepModel
from simulator.moment.model import load_model
from simulator.moment.ops import Dtypes

MODEL, HW = load_model("llama-3.2-1b"), load_hardware("h100-sxm")
SIZES = (1, 2, 4, 8, 16)


def sm(launch: Launch | None = None, async_scheduling: bool = False) -> StepModel:
    return StepModel(MODEL, HW, 1, 1, "graph", Dtypes(), async_scheduling, launch=launch)


def decode(m: StepModel, b: int, ctx: int = 256) -> float:
    return m.moment_s(b, b * ctx, 0, 0, 0.0, 0, b)


def dense_and_logits(m: StepModel, b: int, ctx: int = 256) -> float:
    """A decode step without its attention: the part a padded batch runs at the padded size."""
    return decode(m, b, ctx) - m.attention_s(b, b * ctx, 0, 0.0, 0)


def test_padding_a_batch_of_9_costs_the_16_batch_step():
    m = sm(Launch(SIZES, step_s=0.0))
    plain = sm()
    # the padded rows run every dense op and the logits: 9 costs what 16 does (attention aside)
    assert dense_and_logits(m, 9) == pytest.approx(dense_and_logits(m, 16), rel=1e-12)
    # 16 is captured: nothing to pad, the step is the plain graph step without a per-step overhead
    assert decode(m, 16) == pytest.approx(decode(plain, 16) - HW.host.step_overhead_us * 1e-6, rel=1e-12)
    for b in (3, 5, 9, 12):  # each costs at least its own unpadded graph step, at most the padded size's
        assert decode(m, b) >= decode(plain, b) - HW.host.step_overhead_us * 1e-6 - 1e-15


def test_above_the_largest_size_a_step_runs_eager():
    m = sm(Launch(SIZES, step_s=0.0))
    eager = StepModel(MODEL, HW, 1, 1, "eager", Dtypes())
    # 17 > 16: every kernel is issued by the host, as an eager step (less the per-step overhead)
    assert decode(m, 17) == pytest.approx(decode(eager, 17) - HW.host.step_overhead_us * 1e-6, rel=1e-12)
    assert decode(m, 17) > decode(m, 16)


def test_without_padding_only_exact_sizes_replay_a_graph():
    m = sm(Launch(SIZES, padding=False, step_s=0.0))
    padded = sm(Launch(SIZES, step_s=0.0))
    eager = StepModel(MODEL, HW, 1, 1, "eager", Dtypes())
    assert decode(m, 8) == decode(padded, 8)
    assert decode(m, 9) == pytest.approx(decode(eager, 9) - HW.host.step_overhead_us * 1e-6, rel=1e-12)


def test_prefill_steps_run_eager_unless_graphs_cover_mixed_steps():
    chunk = (0, 0, 1, 12, 12 * 13 / 2, 0, 1)
    eager = StepModel(MODEL, HW, 1, 1, "eager", Dtypes())
    m = sm(Launch(SIZES, step_s=0.0))
    assert m.moment_s(*chunk) == pytest.approx(eager.step_agg(*chunk) - HW.host.step_overhead_us * 1e-6, rel=1e-12)
    # piecewise (vLLM V1): 12 tokens padded to 16, a replay per layer and attention's eager calls
    pw = sm(Launch(SIZES, mixed=True, step_s=0.0))
    assert pw.moment_s(*chunk) <= m.moment_s(*chunk)


def test_the_stacks_host_work_per_step_and_per_sequence():
    a, b = 400e-6, 20e-6
    base = sm(Launch(SIZES, step_s=0.0))
    m = sm(Launch(SIZES, step_s=a, seq_s=b))
    for n in (1, 4, 8):  # not overlapped: added to the step
        assert decode(m, n) - decode(base, n) == pytest.approx(a + b * n, rel=1e-9)
    over = sm(Launch(SIZES, step_s=a, seq_s=b), async_scheduling=True)
    # overlapped: hidden while the device's step is longer, the step is the longer of the two
    assert decode(over, 4) == pytest.approx(decode(base, 4), rel=1e-12)
    slow = sm(Launch(SIZES, step_s=1.0), async_scheduling=True)
    assert decode(slow, 4) == pytest.approx(1.0 + HW.host.graph_launch_us * 1e-6, rel=1e-9)


def test_multi_step_decodes_share_one_scheduling():
    a = 1e-3
    one = sm(Launch(SIZES, step_s=a))
    ten = sm(Launch(SIZES, step_s=a, steps=10))
    assert decode(one, 4) - decode(ten, 4) == pytest.approx(0.9 * a, rel=1e-9)
    chunk = (0, 0, 1, 12, 12 * 13 / 2, 0, 1)  # a prefill step is scheduled on its own
    assert one.moment_s(*chunk) == ten.moment_s(*chunk)


def test_one_launch_per_step_without_sizes():
    m = sm(Launch((), step_s=0.0))  # a TensorRT engine: every step one enqueue
    plain = sm()
    assert decode(m, 300) == pytest.approx(decode(plain, 300) - HW.host.step_overhead_us * 1e-6, rel=1e-12)
