"""A serving stack's launches (cost.Launch) by hand: the host seconds of graph, piecewise and
eager steps from the hardware's host fields (graph_launch_us, each framework call's
`Host.call_us`), the Launch fields and the model's layer count; which size a batch replays
(padding, exact sizes, eager above the largest, one launch per step); the stack's own host work
per step and per sequence, multi-step decode, async scheduling; pipeline stages multiplying the
launches; a speculative draft's forward pass without the per-step work.

Two hosts make each side visible: SLOW launches a graph in 3 ms (far above the device's few
hundred microseconds for Llama 3.2 1B's small steps), so a graph step lasts its launches; FREE
launches for nothing and issues a call in 10 ns, so every step lasts its device work. The device side comes from the
same model's tables through the public Batch entry points (`device_s`), or from the vectorised
attention functions (`attention_ops_s`)."""

import pytest

from hwmodels.load import load_hardware
from simulator.moment import cost
from simulator.moment.cost import Launch, StepModel
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes

MODEL = load_model("llama-3.2-1b")  # 16 layers
LAYERS = 16
H100 = load_hardware("h100-sxm")
CPU = load_hardware("cpu")
SIZES = (1, 2, 4, 8, 16)


def with_host(**fields):
    return H100.model_copy(update={"host": H100.host.model_copy(update=fields)})


# a call costs its tight-loop dispatch + sequence_us: fused attention's calls per layer are
# reshape_and_cache (30 + 1), two views (2 + 1 each) and the attention kernel (90 + 1): 128 us
SLOW = with_host(graph_launch_us=3000.0, dispatch_us=40.0, view_us=2.0, sequence_us=1.0,
                 op_dispatch_us={"reshape_and_cache": 30.0, "attention": 90.0})
ATTN_CALLS_US = (30 + 1) + 2 * (2 + 1) + (90 + 1)
FREE = with_host(graph_launch_us=0.0, dispatch_us=0.01, view_us=0.0, sequence_us=0.0)  # device-bound


def sm(hw=SLOW, launch: Launch | None = None, pp: int = 1, mode: str = "graph", async_scheduling: bool = False,
       kernels: str = "fused", model=MODEL, moe_imbalance: float = 1.0, tp: int = 1) -> StepModel:
    return StepModel(model, hw, tp, pp, mode, Dtypes(), async_scheduling, ep=tp, moe_imbalance=moe_imbalance,
                     kernels=kernels, launch=launch)


def decode(m: StepModel, b: int, ctx: int = 512) -> float:
    return m.moment_s(b, b * ctx, 0, 0, 0.0, 0, b)


def dense(m: StepModel, tokens: int, logits: int) -> float:
    """The token-count part of a step (every op but attention) at `tokens` rows and `logits` logit rows."""
    return m.device_s(Batch(decode_seqs=tokens, logits=logits)) - m.attention_s(tokens, 0, 0, 0.0, 0)


def attention(m: StepModel, b: Batch) -> float:
    return m.attention_ops_s(b)  # the vectorised hwmodels.attention functions


# -- host seconds of a graph step, by hand --------------------------------------------------------
@pytest.mark.parametrize("pp", [1, 2])
def test_a_graph_decode_step_is_one_launch_per_stage(pp):
    m = sm(launch=Launch(SIZES, step_s=0.0), pp=pp)
    assert m.device_s(Batch(16, 16 * 512)) < 2e-3  # the device is done before the 3 ms launches
    assert decode(m, 3) == pytest.approx(3000e-6 * pp, rel=1e-12)
    assert decode(m, 16) == pytest.approx(3000e-6 * pp, rel=1e-12)


@pytest.mark.parametrize("pp", [1, 2])
def test_a_piecewise_decode_step_replays_a_graph_per_layer_and_issues_attention_between(pp):
    # per stage: layers/pp + 1 graphs (before, between and after the layers) and attention's calls
    # in each of its layers; every stage launches its own
    m = sm(launch=Launch(SIZES, piecewise=True, step_s=0.0), pp=pp)
    per_stage = LAYERS // pp
    host_us = (3000.0 * (per_stage + 1) + ATTN_CALLS_US * per_stage) * pp
    assert host_us == {1: 53048.0, 2: 56048.0}[pp]
    assert decode(m, 3) == pytest.approx(host_us * 1e-6, rel=1e-12)
    assert decode(m, 1) == pytest.approx(host_us * 1e-6, rel=1e-12)


def test_piecewise_attention_calls_of_the_pytorch_implementation():
    # HF attention: 6 views (2 + 1), two index_copy_ and one sdpa at dispatch_us (40 + 1)
    m = sm(launch=Launch(SIZES, piecewise=True, step_s=0.0), kernels="pytorch")
    assert decode(m, 2) == pytest.approx((3000.0 * 17 + (6 * 3 + 3 * 41) * 16) * 1e-6, rel=1e-12)


@pytest.mark.parametrize("pp", [1, 2])
def test_without_sizes_every_step_is_one_launch(pp):
    # a TensorRT engine: one enqueue per stage, whatever the batch, decode or prefill
    m = sm(launch=Launch((), step_s=0.0), pp=pp)
    assert decode(m, 300, ctx=16) == pytest.approx(3000e-6 * pp, rel=1e-12)
    assert m.moment_s(0, 0, 1, 100, 100 * 101 / 2, 0, 1) == pytest.approx(3000e-6 * pp, rel=1e-12)


def test_the_stacks_host_work_adds_to_the_launches():
    a, b = 400e-6, 25e-6
    m = sm(launch=Launch(SIZES, piecewise=True, step_s=a, seq_s=b))
    assert decode(m, 3) == pytest.approx(53048e-6 + a + 3 * b, rel=1e-12)
    # a mixed step: its decodes and its prefill chunks are the sequences the stack handles
    mixed = sm(launch=Launch(SIZES, mixed=True, step_s=a, seq_s=b))
    assert mixed.moment_s(2, 600, 3, 9, 9 * 4 / 2 + 3 * 30, 90, 5) == pytest.approx(53048e-6 + a + 5 * b, rel=1e-12)


def test_async_scheduling_overlaps_the_stacks_work_with_the_device_not_the_launches():
    a = 400e-6
    m = sm(launch=Launch(SIZES, piecewise=True, step_s=a), async_scheduling=True)
    assert decode(m, 3) == pytest.approx(53048e-6 + a, rel=1e-12)  # the host's launches and work, in turn
    free = sm(FREE, Launch(SIZES, step_s=a), async_scheduling=True)
    dev = free.device_s(Batch(4, 4 * 512))
    assert dev > a
    assert decode(free, 4) == pytest.approx(dev, rel=1e-12)  # the host's work is hidden
    assert decode(sm(FREE, Launch(SIZES, step_s=0.1), async_scheduling=True), 4) == pytest.approx(0.1, rel=1e-12)


@pytest.mark.parametrize("steps", [2, 5])
def test_multi_step_decode_schedules_once_per_steps(steps):
    a, b = 900e-6, 30e-6
    m = sm(launch=Launch(SIZES, step_s=a, seq_s=b, steps=steps))
    assert decode(m, 4) == pytest.approx(3000e-6 + (a + 4 * b) / steps, rel=1e-12)
    # a prefill step is scheduled on its own: all of the stack's work
    mixed = sm(launch=Launch(SIZES, mixed=True, step_s=a, seq_s=b, steps=steps))
    assert mixed.moment_s(0, 0, 1, 12, 78.0, 0, 1) == pytest.approx(53048e-6 + a + b, rel=1e-12)


# -- which graph a batch replays: the device side -------------------------------------------------
def test_a_batch_of_3_pads_to_the_graph_of_4_and_attends_over_3_sequences():
    m = sm(FREE, Launch(SIZES, step_s=0.0))
    for b, g in ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (16, 16)):
        real = Batch(b, b * 512)
        expected = dense(m, g, g) + attention(m, real)  # dense ops and logits at g rows
        assert decode(m, b) == pytest.approx(expected, rel=1e-9), b
    # a padded batch costs more than its own size would, less than the full graph's real batch
    assert dense(m, 3, 3) < dense(m, 4, 4)
    assert attention(m, Batch(3, 3 * 512)) < attention(m, Batch(4, 4 * 512))


def test_the_smallest_size_need_not_be_one():
    m = sm(FREE, Launch((4, 8), step_s=0.0))
    for b in (1, 2, 3, 4):
        assert decode(m, b) == pytest.approx(dense(m, 4, 4) + attention(m, Batch(b, b * 512)), rel=1e-9), b


def test_without_padding_only_exact_sizes_replay_and_the_rest_run_eager():
    m = sm(launch=Launch(SIZES, padding=False, step_s=0.0))
    eager = sm(mode="eager")  # the same host: every call issued
    for b in (1, 2, 4, 8, 16):
        assert decode(m, b) == pytest.approx(3000e-6, rel=1e-12), b
    for b in (3, 5, 9):
        assert decode(m, b) == pytest.approx(decode(eager, b) - eager.overhead_s, rel=1e-12), b
        assert decode(m, b) > 3000e-6 * 1.5  # 16 layers of calls at 40 us: well above one launch


@pytest.mark.parametrize("kernels", ["fused", "pytorch"])
def test_above_the_largest_size_a_step_runs_as_the_eager_twin(kernels):
    # the eager twin's tables (a launch gap per kernel) and every call issued, then the stack's work
    a = 700e-6
    m = sm(launch=Launch(SIZES, step_s=a), kernels=kernels)
    eager = sm(mode="eager", kernels=kernels)
    for b in (17, 64):
        assert decode(m, b) == pytest.approx(decode(eager, b) - eager.overhead_s + a, rel=1e-12), b
    free = sm(FREE, Launch(SIZES, step_s=a), kernels=kernels)
    eager_free = sm(FREE, mode="eager", kernels=kernels)
    assert decode(free, 64) == pytest.approx(decode(eager_free, 64) - eager_free.overhead_s + a, rel=1e-12)


def test_the_eager_twin_of_a_moe_model_keeps_its_imbalance():
    # experts spread over 2 devices (ep = tp = 2): the busiest one's rows scale with the imbalance
    moe = load_model("qwen1.5-moe-a2.7b")
    m = sm(FREE, Launch(SIZES, step_s=0.0), model=moe, moe_imbalance=1.5, tp=2)
    eager = sm(FREE, mode="eager", model=moe, moe_imbalance=1.5, tp=2)
    balanced = sm(FREE, mode="eager", model=moe, tp=2)
    assert decode(m, 64) == pytest.approx(decode(eager, 64) - eager.overhead_s, rel=1e-12)
    assert decode(eager, 64) != pytest.approx(decode(balanced, 64), rel=1e-6)


def test_a_launch_in_eager_mode_issues_every_call():
    a, b = 500e-6, 20e-6
    m = sm(launch=Launch(SIZES, step_s=a, seq_s=b), mode="eager")
    eager = sm(mode="eager")
    for n in (1, 2, 3, 16, 17):
        assert decode(m, n) == pytest.approx(decode(eager, n) - eager.overhead_s + a + b * n, rel=1e-12), n


# -- prefill steps -----------------------------------------------------------------------------------
# two chunks of 5 and 7 new tokens after 100 and 50 cached ones, beside 2 decodes of 150 cached each
CHUNKS = (2, 300, 2, 12, 5 * 100 + 5 * 6 / 2 + 7 * 50 + 7 * 8 / 2, 150, 4)
MIXED = Batch(2, 300, 2, 12, CHUNKS[4], 150)


def test_a_mixed_step_pads_its_tokens_to_a_graph_and_issues_attention_per_layer():
    m = sm(FREE, Launch(SIZES, mixed=True, step_s=0.0))
    # 14 tokens padded to 16 for the dense ops; logits of the 4 sequences; attention of the real batch
    assert m.moment_s(*CHUNKS) == pytest.approx(dense(m, 16, 4) + attention(m, MIXED), rel=1e-9)
    slow = sm(launch=Launch(SIZES, mixed=True, step_s=0.0))
    assert slow.moment_s(*CHUNKS) == pytest.approx(53048e-6, rel=1e-12)
    # the largest size itself replays; one token more runs eager
    assert slow.moment_s(0, 0, 1, 16, 16 * 17 / 2, 0, 1) == pytest.approx(53048e-6, rel=1e-12)
    eager = sm(mode="eager")
    assert slow.moment_s(0, 0, 1, 17, 17 * 18 / 2, 0, 1) == pytest.approx(
        eager.step_s(Batch(0, 0, 1, 17, 17 * 18 / 2, 0)) - eager.overhead_s, rel=1e-12)


def test_a_prefill_step_without_mixed_graphs_runs_eager():
    a = 300e-6
    m = sm(FREE, Launch(SIZES, step_s=a))
    eager = sm(FREE, mode="eager")
    assert m.moment_s(*CHUNKS) == pytest.approx(eager.step_s(MIXED) - eager.overhead_s + a, rel=1e-12)
    # that eager step is the eager twin's device work or the host's calls, then the stack's work
    dev = dense(eager, 14, 4) + attention(eager, MIXED)
    assert eager.device_s(MIXED) == pytest.approx(dev, rel=1e-9)


# -- the CPU: nothing overlaps -----------------------------------------------------------------------
def test_on_a_cpu_the_host_issues_and_runs_every_kernel_in_turn_with_the_stacks_work():
    a, b = 2e-3, 100e-6
    m = sm(CPU, Launch(SIZES, step_s=a, seq_s=b))
    plain = sm(CPU)  # the hardware's per-step overhead instead of the stack's
    for n in (1, 3, 17):
        assert decode(m, n) == pytest.approx(decode(plain, n) - plain.overhead_s + a + b * n, rel=1e-12), n
    assert m.moment_s(*CHUNKS) == pytest.approx(plain.step_s(MIXED) - plain.overhead_s + a + 4 * b, rel=1e-12)
    # the sum of the three, not a max: the device's work, the host's calls, the stack's work
    dev = plain.device_s(MIXED)
    assert m.moment_s(*CHUNKS) == pytest.approx(dev + plain.issue_s + a + 4 * b, rel=1e-12)


# -- table growth at the edges ------------------------------------------------------------------------
def test_a_step_as_large_as_the_tables_grows_them():
    # fresh models (their tables hold token counts below _size); the eager twins fresh too
    cost._CACHE.clear()
    for extra in (0, 900):
        m = sm(FREE, Launch((), step_s=0.0))
        plain = sm(FREE)
        n = m._size + extra
        b = Batch(0, 0, 1, n, n * (n + 1) / 2, 0)
        assert m.moment_s(0, 0, 1, n, b.prefill_pairs, 0, 1) == pytest.approx(plain.step_s(b) - plain.overhead_s,
                                                                               rel=1e-12)
        cost._CACHE.clear()
        eager_launch = sm(FREE, Launch(SIZES, step_s=0.0))  # above 16: the fresh eager twin
        eager = sm(FREE, mode="eager")
        assert eager_launch.moment_s(0, 0, 1, n, b.prefill_pairs, 0, 1) == pytest.approx(
            eager.step_s(b) - eager.overhead_s, rel=1e-12)


# -- a speculative draft's forward pass ----------------------------------------------------------------
@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_a_forward_pass_is_a_step_without_the_per_step_overhead(mode):
    for b in (Batch(4, 4 * 300), MIXED, Batch(0, 0, 1, 40, 40 * 41 / 2, 0)):
        m, ref = sm(H100, mode=mode), sm(H100, mode=mode)
        args = (b.decode_seqs, b.decode_ctx, b.prefill_seqs, b.prefill_tokens, b.prefill_pairs, b.prefill_ctx,
                b.logit_rows)
        assert m.forward_s(*args) == pytest.approx(ref.step_s(b) - H100.host.step_overhead_us * 1e-6, rel=1e-12)
    # on a graph: the longer of the device's work and one launch
    g = sm(SLOW)
    assert g.forward_s(1, 100, 0, 0, 0.0, 0, 1) == pytest.approx(3000e-6, rel=1e-12)


def test_a_forward_pass_as_large_as_the_tables_grows_them():
    for extra in (0, 900):
        m, ref = sm(H100), sm(H100)
        n = m._size + extra
        b = Batch(0, 0, 1, n, n * (n + 1) / 2, 0)
        assert m.forward_s(0, 0, 1, n, b.prefill_pairs, 0, 1) == pytest.approx(
            ref.step_s(b) - H100.host.step_overhead_us * 1e-6, rel=1e-12)
