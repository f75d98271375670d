"""The CUDA-graph capture helper and the graph path of validate, run on the CPU (emulated).

The first CUDA validate run failed inside a captured layer: its static inputs (x, positions,
RoPE rows) lived only in a lambda the old helper dropped, so the graph read freed memory and
`index_copy_` wrote out of bounds. These tests catch that without a GPU: the helper must keep
everything the captured function reads alive, and the captured step's index arithmetic (cache
length, positions, slices) must hold, which on a CPU raises where a GPU would read garbage.
"""

from __future__ import annotations

import gc
import weakref

import pytest

torch = pytest.importorskip("torch", reason="needs PyTorch (pip install 'momentsim[calibration]')")

from calibration.graphs import Captured  # noqa: E402
from calibration.microbench import TINY  # noqa: E402
from calibration.reference import Reference  # noqa: E402
from calibration.validate import Shapes, run_model  # noqa: E402
from hwmodels.load import load_hardware  # noqa: E402


def _layer_fn(ref: Reference, b: int, c: int):
    """What validate's layer cases build: static inputs made outside the capture, held only by
    the returned closure."""
    x = torch.randn(b, 1, TINY.hidden_size)
    pos, cos, sin = ref.rope_at(c, 1)
    refs = [weakref.ref(t) for t in (x, pos, cos, sin)]
    lay = ref.layers[0]
    return (lambda: ref.attn_block(x, lay, pos, cos, sin, c + 1)), refs


def test_captured_keeps_the_static_inputs_alive():
    ref = Reference(TINY)
    ref.alloc_cache(2, 17, fill=True)
    fn, refs = _layer_fn(ref, 2, 16)
    cap = Captured(fn, device="cpu")
    replay = cap.replay  # what validate keeps: the bound replay only
    del fn, cap
    gc.collect()
    assert all(r() is not None for r in refs), "a static input of the captured function was freed"
    assert replay().shape == (2, 1, TINY.hidden_size)


def test_replay_repeats_the_captured_work():
    x = torch.zeros(3)

    def bump() -> torch.Tensor:
        x.add_(1)
        return x

    cap = Captured(bump, (x,), device="cpu")
    assert cap.inputs == (x,) and cap.graph is None
    for _ in range(3):
        cap.replay()
    assert torch.equal(x, torch.full((3,), 4.0))  # capture once, replay three times


@pytest.mark.parametrize("b,c", [(1, 0), (2, 7), (3, 31)])
def test_captured_decode_step_matches_eager_at_the_cache_edge(b, c):
    """The decode at context c writes position c of a cache of c + 1 tokens (the last slot) and
    attends over [0, c + 1): the exact sizes validate allocates for a graph case."""
    ref = Reference(TINY, dtype="fp32")
    ref.alloc_cache(b, c + 1, fill=True)
    tok = torch.randint(0, TINY.vocab_size, (b, 1), generator=torch.Generator().manual_seed(c))
    eager = ref.step(tok, c)
    ref.alloc_cache(b, c + 1, fill=True)  # the same cache contents again (seeded fill)
    replay = ref.capture(b, c)
    assert torch.equal(replay(tok), eager)
    assert torch.equal(replay(tok), eager)  # a second replay rewrites the same slot


def test_a_step_past_the_cache_is_refused():
    ref = Reference(TINY)
    ref.alloc_cache(2, 8)
    with pytest.raises(ValueError, match="cache holds"):
        ref.capture(2, 8)  # position 8 of an 8-token cache
    with pytest.raises(ValueError, match="cache holds"):
        ref.capture(3, 2)  # more sequences than the cache holds


def test_validate_graph_path_runs_on_the_cpu():
    """run_model's graph cases (captured layers and decode steps) through the emulated helper:
    every index the captured work computes must fall inside the caches validate allocates."""
    hw = load_hardware("cpu", use_profile=False)
    shapes = Shapes(attn_decode=[(1, 15), (2, 31)], attn_prefill=[(2, 8)], ffn_tokens=[3],
                    decode=[(1, 15), (2, 31)], prefill=[], generation=[])
    cases = run_model(TINY, 2, "cpu", hw, shapes, reps=2, say=lambda s: None, graphs=True)
    fams = [c.family for c in cases]
    assert fams.count("decode_step_graph") == 2 and fams.count("attn_layer") == 3
    assert all(c.measured_ms > 0 and c.samples >= 2 for c in cases)
