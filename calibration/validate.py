"""`momentsim validate`: whole layers and whole steps of a real decoder, measured and predicted.

The reference decoder (calibration.reference) runs with random weights and real shapes; each
case is timed and predicted by the simulator's own cost model with the hardware under test:

Every prediction prices plain PyTorch's kernels (simulator.moment.kernels "pytorch"), as the
reference decoder runs them.

- attn_layer / ffn_layer: one layer's attention (norm, QKV, RoPE, attention with the cache,
  O projection, residual) or FFN (norm, gate+up, SiLU * up, down, residual), predicted as the sum
  of its kernels priced exactly as `simulator.moment.cost` prices them; on a CPU plus the host's
  calls; on CUDA measured as device time of the layer replayed as a CUDA graph (graph floors).
- decode_step (eager), decode_step_graph (CUDA graph), prefill: `StepModel.cost(Batch).step_ms`
  of a ModelSpec with the same number of layers as the decoder that ran (nothing is scaled).
- generation: a static batch's prefill and its decode steps, predicted by the serving engine
  (the makespan of a `momentsim run` scenario of that batch with the static scheduler).

None of these cases is ever given to the fit: calibrate sees microbenchmarks only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from hwmodels.spec import DTYPE_BYTES, Hardware
from simulator.moment.cost import op_seconds, step_model
from simulator.moment.kernels import calls, compose
from simulator.moment.model import ModelSpec, load_model
from simulator.moment.ops import Batch, Dtypes, Op, attention_ops, dense_ops
from simulator.serving.engine import simulate
from simulator.serving.scenario import Scenario

FAMILIES = ("attn_layer", "ffn_layer", "decode_step", "decode_step_graph", "prefill", "generation")
ATTN_OPS = ("input_norm", "qkv_proj", "qkv_bias", "rope", "o_proj", "attn_residual")
FFN_OPS = ("post_attn_norm", "ffn_up", "ffn_act", "ffn_down", "ffn_residual")


@dataclass
class Shapes:
    """The cases of one model: (batch, context) decodes, (batch, length) prefills, token counts
    of FFN layers, (batch, prompt, new tokens) generations."""

    attn_decode: list[tuple[int, int]]
    attn_prefill: list[tuple[int, int]]
    ffn_tokens: list[int]
    decode: list[tuple[int, int]]
    prefill: list[tuple[int, int]]
    generation: list[tuple[int, int, int]]


def shapes_for(device: str, size: str) -> Shapes:
    """The cases of each size: tiny (tests), quick, full, and wide (beyond the full set: batches to
    256, contexts to 16k, prompts to 8k, where extrapolation shows; a case whose KV cache does not
    fit is left out)."""
    if size == "tiny":
        return Shapes([(1, 16), (2, 32)], [(1, 16)], [1, 16], [(1, 16), (2, 32)], [(1, 16), (2, 8)], [(2, 8, 4)])
    if size == "wide":
        if device == "cpu":
            return Shapes([(1, 8192), (64, 256)], [(1, 4096)], [2048],
                          [(1, 4096), (1, 16384), (8, 4096), (64, 256), (128, 256), (256, 256)],
                          [(1, 2048), (1, 4096), (1, 8192)], [(1, 256, 16), (32, 128, 8)])
        return Shapes([(1, 16384), (256, 1024)], [(1, 8192)], [8192, 16384],
                      [(b, c) for b in (1, 16, 64, 256) for c in (256, 1024, 4096, 16384)],
                      [(1, 128), (1, 1024), (1, 8192), (8, 1024)], [(1, 1024, 64), (64, 256, 32)])
    if device == "cpu":
        if size == "quick":
            return Shapes([(1, 128), (16, 1024)], [(1, 256)], [1, 16, 256], [(1, 128), (8, 512)], [(1, 128), (1, 512)],
                          [(4, 64, 8)])
        return Shapes([(1, 128), (8, 512), (32, 2048)], [(1, 128), (1, 512), (4, 256)], [1, 8, 32, 128, 512],
                      [(1, 128), (4, 512), (16, 1024), (32, 2048)], [(1, 128), (1, 512), (4, 256), (1, 1024)],
                      [(4, 128, 16)])
    if size == "quick":
        return Shapes([(1, 1024), (32, 4096)], [(1, 2048)], [1, 64, 2048], [(1, 1024), (32, 2048)], [(1, 512), (1, 4096)],
                      [(8, 512, 32)])
    return Shapes([(1, 512), (8, 2048), (32, 4096), (128, 2048)], [(1, 512), (1, 2048), (4, 1024), (1, 8192)],
                  [1, 16, 64, 256, 1024, 4096], [(b, c) for b in (1, 8, 32, 128) for c in (512, 2048, 8192)],
                  [(1, 128), (1, 512), (1, 2048), (1, 8192), (4, 1024)], [(8, 512, 64), (32, 1024, 32)])


@dataclass
class VCase:
    family: str
    model: str
    layers: int
    label: str
    shape: dict[str, int]
    measured_ms: float = float("nan")
    predicted_ms: float = float("nan")
    samples: int = 0
    min_ms: float = float("nan")

    @property
    def err(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


# -- predictions ----------------------------------------------------------------------------------

KERNELS = "pytorch"  # the reference decoder is plain PyTorch (simulator.moment.kernels)


def layer_ops(spec: ModelSpec, which: str, tokens: int, batch: Batch | None, dt: Dtypes) -> list[Op]:
    """The ops of one attention or FFN layer of `spec` (simulator.moment.ops, restricted by name)."""
    one = spec.model_copy(update={"num_hidden_layers": 1})
    names = ATTN_OPS if which == "attn" else FFN_OPS
    ops = [o for o in dense_ops(one, tokens, 0, dt) if o.name in names]
    if which == "attn" and batch is not None:
        ops += attention_ops(one, batch, dt)
    return ops


def predict_layer(spec: ModelSpec, hw: Hardware, which: str, tokens: int, batch: Batch | None, dt: Dtypes,
                  mode: str) -> float:
    """ms of one layer as the reference decoder runs it: its kernels' device time (inside a CUDA
    graph for mode "graph", as validate replays a GPU layer), plus on a CPU the host's calls."""
    one = spec.model_copy(update={"num_hidden_layers": 1})
    sm = step_model(one, hw, mode=mode, dtypes=dt, kernels=KERNELS)
    ops = [o for o in layer_ops(spec, which, tokens, batch, dt) if not o.kind.startswith("attn_")]
    dev = sum(float(np.sum(op_seconds(o, hw, dt, graph=sm.graph))) for o in compose(ops, KERNELS, DTYPE_BYTES[dt.act]))
    if which == "attn" and batch is not None:
        dev += sm.attention_s(batch.decode_seqs, batch.decode_ctx, batch.prefill_tokens, batch.prefill_pairs,
                              batch.prefill_ctx, batch.prefill_seqs)
    host = 0.0
    if sm.cpu or mode == "eager":
        a = DTYPE_BYTES[dt.act]
        names = [o.name for o in ops] + (["attention"] if which == "attn" and batch is not None else [])
        host = sum(hw.host.call_us(c.host_op(a)) for n in names for c in calls(KERNELS, n)) * 1e-6
    return (dev + host if sm.cpu else max(dev, host)) * 1e3


def predict_step(spec: ModelSpec, hw: Hardware, batch: Batch, mode: str, dt: Dtypes) -> float:
    return step_model(spec, hw, mode=mode, dtypes=dt, kernels=KERNELS).cost(batch).step_ms


def generation_scenario(spec: ModelSpec, hw: Hardware, b: int, n: int, new: int, mode: str, dt: Dtypes,
                        folder: Path) -> Scenario:
    """The static-batch generation as a `momentsim run` scenario: b prompts of n tokens arrive at
    once and are served as one static batch to new tokens each (model and hardware written out
    as files, since the decoder that ran may have fewer layers than the preset)."""
    (folder / "config.json").write_text(spec.model_dump_json())
    (folder / "hardware.yaml").write_text(yaml.safe_dump(hw.model_dump(mode="json")))
    return Scenario.model_validate({
        "model": str(folder / "config.json"), "hardware": str(folder / "hardware.yaml"),
        "serving": {"scheduler": "static", "max_batch_size": b, "max_batched_tokens": max(b * n, 1), "mode": mode,
                    "kernels": KERNELS, "weight_dtype": dt.weight, "act_dtype": dt.act, "kv_dtype": dt.kv,
                    "activation_reserve_gb": 0.0},
        "workload": {"num_requests": b, "arrival": {"process": "burst"},
                     "prompt_len": {"dist": "fixed", "value": n}, "output_len": {"dist": "fixed", "value": new}}})


def predict_generation(spec: ModelSpec, hw: Hardware, b: int, n: int, new: int, mode: str, dt: Dtypes) -> float:
    """The makespan of the generation simulated by the serving engine (as `momentsim run` does):
    a prefill of b x n, then new - 1 decode steps at contexts n .. n + new - 2."""
    with tempfile.TemporaryDirectory() as tmp:
        return simulate(generation_scenario(spec, hw, b, n, new, mode, dt, Path(tmp))).makespan_s * 1e3


# -- models -------------------------------------------------------------------------------------------

def resolve_models(arg: str | None, device: str, size: str) -> list[tuple[ModelSpec, int]]:
    """`name[:layers],...`; names are presets, paths, or mini-llama / tiny-llama (built in)."""
    from calibration.microbench import MINI, TINY

    if arg is None:
        arg = {"tiny": "tiny-llama:2", "cpu": "llama-3.2-1b:2,mini-llama:4"}.get(
            size if size == "tiny" else device, "llama-3.2-1b,llama-3-8b,llama-2-13b")
    out = []
    for item in [s.strip() for s in arg.split(",") if s.strip()]:
        name, _, layers = item.partition(":")
        spec = {"mini-llama": MINI, "tiny-llama": TINY}.get(name) or load_model(name)
        if spec.is_moe or not spec.gated:
            raise InputError("--models", name, "the reference decoder is a dense gated (SwiGLU) Llama; "
                             "MoE and plain-MLP models are not supported")
        try:
            n = int(layers) if layers else (spec.num_hidden_layers if device == "cuda" else min(2, spec.num_hidden_layers))
        except ValueError:
            raise InputError("--models", item, "expected NAME or NAME:LAYERS, e.g. llama-3.2-1b:2") from None
        if n < 1:
            raise InputError("--models", item, "layers must be >= 1")
        out.append((spec, n))
    if not out:
        raise InputError("--models", arg, "no model given")
    return out


# -- measuring ----------------------------------------------------------------------------------------

@dataclass
class Timed:
    case: VCase
    fn: Callable[[], object]
    mode: str          # "wall" (perf_counter, synced) or "device" (CUDA events, graph replay)
    est_s: float


def _time_rounds(items: Sequence[Timed], reps: int, flush: Callable[[], None] | None, device: str) -> None:
    """Warm each case up, then one sample of each per round (interleaved, see microbench.chunks)."""
    import torch

    from calibration.microbench import time_cuda

    for it in items:
        it.fn()
    if device == "cuda":
        torch.cuda.synchronize()
    samples: dict[int, list[float]] = {i: [] for i in range(len(items))}
    for r in range(reps):
        for i, it in enumerate(items):
            if r >= max(3, int(min(reps, 2.0 / max(it.est_s, 1e-4)))):
                continue  # slow cases stop at 3 repeats
            if it.mode == "device":
                samples[i] += time_cuda(it.fn, 1, warmup=0, flush=flush)
                continue
            if flush is not None:
                flush()
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            it.fn()
            if device == "cuda":
                torch.cuda.synchronize()
            samples[i].append(time.perf_counter() - t0)
    for i, it in enumerate(items):
        s = samples[i]
        it.case.measured_ms = float(np.median(s)) * 1e3
        it.case.min_ms = float(np.min(s)) * 1e3
        it.case.samples = len(s)


@dataclass
class Planned:
    """A case before it runs: the cache it needs and how to make its timed function."""

    case: VCase
    need: tuple[int, int]                        # (batch, tokens) of KV cache
    make: Callable[[], Callable[[], object]]     # called once the cache is allocated
    mode: str
    est_s: float


def run_model(spec: ModelSpec, layers: int, device: str, hw: Hardware, shapes: Shapes, reps: int,
              say: Callable[[str], None], progress: Any = None, graphs: bool | None = None,
              dtype: str | None = None) -> list[VCase]:
    """Build the decoder once, measure every case of `shapes`, predict each.

    Where one KV cache for every shape fits in memory (CPU runs), all cases share it and their
    repeats are interleaved; otherwise (big models on a GPU) each case gets a cache of its own
    size, and a case whose cache cannot fit is left out with a note. `graphs` (default: on CUDA)
    runs the CUDA-graph cases; off CUDA the graphs are emulated (calibration.graphs), which
    checks their index arithmetic, not their speed."""
    import torch

    from calibration.graphs import Captured
    from calibration.microbench import Flusher, mem_available_bytes
    from calibration.reference import Reference

    dtype = dtype or default_dtype(device)
    dt = Dtypes(dtype, dtype, dtype)
    spec_l = spec.model_copy(update={"num_hidden_layers": layers})
    ref = Reference(spec, n_layers=layers, dtype=dtype, device=device, seed=0)
    lay = ref.layers[0]
    h = spec.hidden_size
    gen = torch.Generator(device=device).manual_seed(0)
    cpu_gen = torch.Generator().manual_seed(0)
    tdt = ref.dtype
    layer_mode = "graph" if device == "cuda" else "eager"  # a GPU layer is timed as a graph replay
    cuda = device == "cuda"
    graphs = cuda if graphs is None else graphs
    name = spec.name
    plan: list[Planned] = []

    def x_of(b: int, n: int) -> torch.Tensor:
        return torch.randn(b, n, h, generator=gen, device=device, dtype=torch.float32).to(tdt)

    def tokens_of(b: int, n: int) -> list[list[int]]:
        return torch.randint(0, spec.vocab_size, (b, n), generator=cpu_gen).tolist()

    def layer(case: VCase, need: tuple[int, int], fn_of: Callable[[], Callable[[], object]]) -> None:
        # the bound replay holds the Captured, which holds fn_of()'s closure (x, positions, RoPE rows)
        make = (lambda: Captured(fn_of(), device=device).replay) if graphs else fn_of
        plan.append(Planned(case, need, make, "device" if cuda else "wall", case.predicted_ms * 1e-3))

    for b, c in shapes.attn_decode:
        case = VCase("attn_layer", name, 1, f"{name} attn decode b={b} ctx={c}", {"batch": b, "ctx": c})
        case.predicted_ms = predict_layer(spec, hw, "attn", b, Batch.of(decode=[(b, c)]), dt, layer_mode)

        def fn_of(b: int = b, c: int = c) -> Callable[[], object]:
            x = x_of(b, 1)
            pos, cos, sin = ref.rope_at(c, 1)
            return lambda: ref.attn_block(x, lay, pos, cos, sin, c + 1)
        layer(case, (b, c + 1), fn_of)
    for b, n in shapes.attn_prefill:
        case = VCase("attn_layer", name, 1, f"{name} attn prefill b={b} len={n}", {"batch": b, "len": n})
        case.predicted_ms = predict_layer(spec, hw, "attn", b * n, Batch.of(prefill=[(b, n)]), dt, layer_mode)

        def fn_of(b: int = b, n: int = n) -> Callable[[], object]:
            x = x_of(b, n)
            pos, cos, sin = ref.rope_at(0, n)
            return lambda: ref.attn_block(x, lay, pos, cos, sin, n)
        layer(case, (b, n), fn_of)
    for t in shapes.ffn_tokens:
        case = VCase("ffn_layer", name, 1, f"{name} ffn tokens={t}", {"tokens": t})
        case.predicted_ms = predict_layer(spec, hw, "ffn", t, None, dt, layer_mode)

        def fn_of(t: int = t) -> Callable[[], object]:
            x = x_of(1, t)
            return lambda: ref.ffn_block(x, lay)
        layer(case, (1, 1), fn_of)
    for b, c in shapes.decode:
        case = VCase("decode_step", name, layers, f"{name} decode b={b} ctx={c}", {"batch": b, "ctx": c})
        case.predicted_ms = predict_step(spec_l, hw, Batch.of(decode=[(b, c)]), "eager", dt)
        toks = tokens_of(b, 1)
        # a server gets token ids as Python ints, makes a tensor, reads the next ones back
        plan.append(Planned(case, (b, c + 1), lambda toks=toks, c=c: (
            lambda: ref.step(torch.tensor(toks, device=device), c).cpu().tolist()), "wall", case.predicted_ms * 1e-3))
        if graphs:
            g = VCase("decode_step_graph", name, layers, f"{name} decode graph b={b} ctx={c}", {"batch": b, "ctx": c})
            g.predicted_ms = predict_step(spec_l, hw, Batch.of(decode=[(b, c)]), "graph", dt)

            def graph_of(b: int = b, c: int = c, toks: list[list[int]] = toks) -> Callable[[], object]:
                replay, tt = ref.capture(b, c), torch.tensor(toks)
                return lambda: replay(tt).tolist()
            plan.append(Planned(g, (b, c + 1), graph_of, "wall", g.predicted_ms * 1e-3))
    for b, n in shapes.prefill:
        case = VCase("prefill", name, layers, f"{name} prefill b={b} len={n}", {"batch": b, "len": n})
        case.predicted_ms = predict_step(spec_l, hw, Batch.of(prefill=[(b, n)]), "eager", dt)
        toks = tokens_of(b, n)
        plan.append(Planned(case, (b, n), lambda toks=toks: (
            lambda: ref.step(torch.tensor(toks, device=device), 0).cpu().tolist()), "wall", case.predicted_ms * 1e-3))
    for b, n, new in shapes.generation:
        case = VCase("generation", name, layers, f"{name} generate b={b} prompt={n} new={new}",
                     {"batch": b, "prompt": n, "new": new})
        case.predicted_ms = predict_generation(spec_l, hw, b, n, new, "eager", dt)
        prompt = torch.tensor(tokens_of(b, n))
        plan.append(Planned(case, (b, n + new), lambda prompt=prompt, new=new: (
            lambda: ref.generate(prompt, new)), "wall", case.predicted_ms * 1e-3))

    size = torch.tensor([], dtype=tdt).element_size()
    per_token = 2.0 * layers * spec.kv_dim * size
    free = mem_available_bytes() if device == "cpu" else float(torch.cuda.mem_get_info()[0])
    budget = 0.6 * free
    fits = [p for p in plan if p.need[0] * p.need[1] * per_token <= budget]
    for p in plan:
        if p not in fits:
            say(f"  left out {p.case.label}: its KV cache needs {p.need[0] * p.need[1] * per_token / 1e9:.1f} GB")
    say(f"{name} ({layers} layers, {dtype}): {len(fits)} cases")
    flush = Flusher(device)
    mb_, ml = max(p.need[0] for p in fits), max(p.need[1] for p in fits)
    if mb_ * ml * per_token <= budget:  # one cache for all: interleave the cases' repeats
        ref.alloc_cache(mb_, ml, fill=True)
        items = [Timed(p.case, p.make(), p.mode, p.est_s) for p in fits]
        order = sorted(items, key=lambda it: it.est_s)
        chunk: list[Timed] = []
        t = 0.0
        for it in order:
            if chunk and (t + it.est_s > 3.0 or len(chunk) >= 10):
                _time_rounds(chunk, reps, flush, device)
                _tick(progress, chunk)
                chunk, t = [], 0.0
            chunk.append(it)
            t += it.est_s
        if chunk:
            _time_rounds(chunk, reps, flush, device)
            _tick(progress, chunk)
        items.clear()
    else:  # a cache of each case's size, one case at a time
        for p in fits:
            ref.alloc_cache(*p.need, fill=True)
            it = Timed(p.case, p.make(), p.mode, p.est_s)
            _time_rounds([it], reps, flush, device)
            _tick(progress, [it])
            del it
            ref.free_cache()
            if cuda:
                torch.cuda.empty_cache()
    ref.free_cache()
    if cuda:
        torch.cuda.empty_cache()
    return [p.case for p in fits]


def _tick(progress: Any, chunk: Sequence[Timed]) -> None:
    if progress is not None:
        for it in chunk:
            progress.step(it.case.label)


# -- reporting ----------------------------------------------------------------------------------------

def family_summary(cases: Sequence[VCase]) -> dict[str, dict[str, float | int]]:
    out: dict[str, dict[str, float | int]] = {}
    for fam in FAMILIES:
        errs = [abs(c.err) for c in cases if c.family == fam and np.isfinite(c.err)]
        if errs:
            out[fam] = {"cases": len(errs), "median_abs_err": round(float(np.median(errs)), 4),
                        "worst_abs_err": round(float(np.max(errs)), 4)}
    errs = [abs(c.err) for c in cases if np.isfinite(c.err)]
    if errs:
        out["all"] = {"cases": len(errs), "median_abs_err": round(float(np.median(errs)), 4),
                      "worst_abs_err": round(float(np.max(errs)), 4)}
    return out


def probe(device: str) -> dict[str, Any]:
    """The machine's speed now: calibrate's probe (a large GEMM per dtype, a large copy)."""
    from calibration import microbench as mb

    sp = mb.probe_speed(device)
    return {"gflops": {k: round(v / 1e9, 1) for k, v in sp.flops.items() if k != "fp8"}, "copy_gbps": round(sp.bw / 1e9, 1)}


def profile_probe(hardware: str) -> dict[str, Any] | None:
    """The probe recorded by the calibration behind `hardware` (a profile JSON, or a preset with a
    committed profile), if any."""
    from hwmodels.errors import load_mapping
    from hwmodels.load import PROFILE_DIR

    path = Path(hardware) if hardware.endswith(".json") else PROFILE_DIR / f"{hardware}.json"
    try:
        got = load_mapping(path)["fit"]["facts"]["probe"]
    except (InputError, KeyError, TypeError):
        return None
    return got if isinstance(got, dict) else None


def speed_lines(probes: dict[str, Any], device: str) -> list[str]:
    """How fast the machine ran while validated, against its profile's calibration: a CPU VM's
    speed moves by tens of percent from day to day, and predictions assume the profile's."""
    dt = "fp32" if device == "cpu" else "bf16"

    def fmt(x: dict[str, Any]) -> str:
        return f"{dt} GEMM {x['gflops'].get(dt, float('nan')):.1f} GFLOP/s, copy {x['copy_gbps']:.1f} GB/s"
    out = [f"probe: {fmt(probes['start'])} at the start, {fmt(probes['end'])} at the end"]
    ref = probes.get("profile")
    if ref and ref.get("gflops", {}).get(dt):
        now = (probes["start"]["gflops"][dt] + probes["end"]["gflops"][dt]) / 2
        pct = 100 * (now / ref["gflops"][dt] - 1)
        out.append(f"the profile's calibration measured {fmt(ref)}: this machine ran {abs(pct):.0f} % "
                   f"{'faster' if pct >= 0 else 'slower'} (predictions assume the profile's speed)")
    return out


def markdown(cases: Sequence[VCase], summ: dict[str, Any], meta: dict[str, Any]) -> str:
    fp = meta["fingerprint"]
    who = fp["gpu"]["name"] if "gpu" in fp else f"{fp['cpu']['model_name']} ({fp['cpu']['torch_threads']} threads)"
    lines = ["# Validation: measured against predicted", "",
             f"- device: {who}, torch {fp['torch']}, {fp['date']}, "
             f"{meta.get('dtype') or default_dtype('cuda' if 'gpu' in fp else 'cpu')}",
             f"- hardware predicted with: `{meta['hardware']}` ({meta['hardware_name']})",
             f"- command: `{meta['command']}`",
             *[f"- {line}" for line in (speed_lines(meta["probe"], "cuda" if "gpu" in fp else "cpu")
                                         if meta.get("probe") else [])],
             f"- {len(cases)} cases; whole layers and steps of the reference decoder, none used in the fit", "",
             "## Error per family (absolute, relative to measured)", "",
             "| family | cases | median | worst |", "| --- | ---: | ---: | ---: |"]
    for fam, s in summ.items():
        lines.append(f"| {fam} | {s['cases']} | {s['median_abs_err'] * 100:.1f} % | {s['worst_abs_err'] * 100:.1f} % |")
    lines += ["", "## Cases", "", "| family | case | layers | measured ms | predicted ms | error % |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for c in cases:
        lines.append(f"| {c.family} | {c.label} | {c.layers} | {c.measured_ms:.3f} | {c.predicted_ms:.3f} | "
                     f"{c.err * 100:+.1f} |")
    lines.append("")
    return "\n".join(lines)


COLORS = {"attn_layer": "tab:blue", "ffn_layer": "tab:orange", "decode_step": "tab:green",
          "decode_step_graph": "tab:olive", "prefill": "tab:red", "generation": "tab:purple"}


def plot_title(fp: dict[str, Any], hw_name: str) -> str:
    """The plots' title: the measured device (its GPU, else its CPU) against the hardware predicted with."""
    return f"{fp.get('gpu', {}).get('name') or fp.get('cpu', {}).get('model_name', fp.get('device', ''))} vs {hw_name}"


def plots(cases: Sequence[VCase], out: Path, title: str) -> list[Path]:
    """Predicted against measured (log-log, with the 15 % band), and the error of every case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    allv = [v for c in cases for v in (c.measured_ms, c.predicted_ms) if v > 0]
    lo, hi = min(allv) / 1.5, max(allv) * 1.5
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, "k-", lw=1, label="predicted = measured")
    ax.fill_between(xs, xs / 1.15, xs * 1.15, color="0.85", label="±15 %")
    for fam in FAMILIES:
        sel = [c for c in cases if c.family == fam]
        if sel:
            ax.scatter([c.measured_ms for c in sel], [c.predicted_ms for c in sel], s=28, color=COLORS[fam],
                       label=fam, edgecolor="k", linewidth=0.4, zorder=3)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (ms)",
           ylabel="predicted (ms)", title=f"{title}: predicted vs measured")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    p = out / "pred_vs_measured.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(8.0, max(3.0, 0.22 * len(cases) + 1.2)))
    ys = np.arange(len(cases))[::-1]
    errs = [c.err * 100 for c in cases]
    cap = 200.0  # a wild case is clipped and labelled, so the rest stay readable
    ax.barh(ys, [min(e, cap) for e in errs], color=[COLORS[c.family] for c in cases], edgecolor="k", linewidth=0.3)
    for y, e in zip(ys, errs, strict=True):
        if e > cap:
            ax.text(cap, y, f" {e:+.0f} %", va="center", fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    for v in (-15, 15):
        ax.axvline(v, color="0.5", ls="--", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([c.label for c in cases], fontsize=7)
    ax.set(xlabel="error of the prediction (%, + = predicted slower)", title=f"{title}: error by case")
    ax.grid(True, axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[f]) for f in FAMILIES if any(c.family == f for c in cases)]
    ax.legend(handles, [f for f in FAMILIES if any(c.family == f for c in cases)], fontsize=7, loc="lower right")
    fig.tight_layout()
    p = out / "error_by_case.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


# -- the command --------------------------------------------------------------------------------------

def validate(device: str, hardware: str, out: str | Path, size: str = "full", models: str | None = None,
             command: str | None = None, progress_stream: Any = None, tty: bool | None = None,
             log: Callable[[str], None] | None = None, dtype: str | None = None) -> dict[str, Any]:
    """Measure and predict every case, in `dtype` (default_dtype); write validation.md,
    validation.json and two plots."""
    from calibration.calibrate import check_device

    check_device(device)
    from calibration import microbench as mb

    say = log or (lambda s: print(s, file=sys.stderr))
    hw = load_hardware(hardware)
    dtype = dtype or default_dtype(device)
    mods = resolve_models(models, device, size)
    shapes = shapes_for(device, size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        mb.setup_threads()
    fp = mb.fingerprint(device)
    probes = [probe(device)] if size != "tiny" else []
    reps = {"tiny": 3, "quick": 5, "full": 7, "wide": 5}.get(size, 7)
    total = 0
    for _ in mods:
        total += len(shapes.attn_decode) + len(shapes.attn_prefill) + len(shapes.ffn_tokens) + len(shapes.prefill)
        total += len(shapes.decode) * (2 if device == "cuda" else 1) + len(shapes.generation)
    prog = mb.Progress(total, progress_stream, tty)
    t0 = time.perf_counter()
    cases: list[VCase] = []
    for spec, layers in mods:
        need = _need_bytes(spec, layers, dtype)
        free = mb.mem_available_bytes() if device == "cpu" else _cuda_free()
        if need > 0.8 * free:
            say(f"skip {spec.name}: needs {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
            continue
        cases += run_model(spec, layers, device, hw, shapes, reps, prog.section, prog, dtype=dtype)
    prog.close()
    summ = family_summary(cases)
    fp["load_average_end"] = mb.loadavg()
    meta = {"fingerprint": fp, "hardware": hardware, "hardware_name": hw.name, "profile": hw.profile,
            "command": command or "momentsim validate (from Python)", "size": size, "dtype": dtype,
            "seconds": round(time.perf_counter() - t0, 1), "models": [f"{s.name}:{n}" for s, n in mods]}
    if probes:
        probes.append(probe(device))
        meta["probe"] = {"start": probes[0], "end": probes[1], "profile": profile_probe(hardware)}
    data = {"meta": meta, "summary": summ, "cases": [{**asdict(c), "err": round(c.err, 5)} for c in cases]}
    (out / "validation.json").write_text(json.dumps(_clean(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    (out / "validation.md").write_text(markdown(cases, summ, meta), encoding="utf-8")
    if cases:
        plots(cases, out, plot_title(fp, hw.name))
    return data


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return round(x, 6) if np.isfinite(x) else None
    return x


def default_dtype(device: str) -> str:
    """What validate runs in where --dtype is not given: fp32 on a CPU (its native GEMMs), bf16
    on a GPU."""
    return "fp32" if device == "cpu" else "bf16"


def _cuda_free() -> float:
    import torch

    return float(torch.cuda.mem_get_info()[0])


def _need_bytes(spec: ModelSpec, layers: int, dtype: str) -> float:
    from calibration.reference import estimate_bytes

    return 1.3 * estimate_bytes(spec, layers, dtype)  # weights; caches are sized per case in run_model


def summary_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{'family':18s} {'cases':>5s} {'median':>8s} {'worst':>8s}"]
    for fam, s in data["summary"].items():
        lines.append(f"{fam:18s} {s['cases']:5d} {s['median_abs_err'] * 100:7.1f}% {s['worst_abs_err'] * 100:7.1f}%")
    return lines


def predict_case(c: dict[str, Any], hw: Hardware, device: str, dtype: str | None = None) -> float:
    """ms of a saved case (a validation.json entry), predicted as `validate` predicts it."""
    from calibration.records import BUILT_IN

    base = BUILT_IN.get(c["model"]) or load_model(c["model"])
    dtype = dtype or default_dtype(device)
    dt = Dtypes(dtype, dtype, dtype)
    spec = base.model_copy(update={"num_hidden_layers": c["layers"]})
    s, fam = c["shape"], c["family"]
    layer_mode = "graph" if device == "cuda" else "eager"
    if fam in ("decode_step", "decode_step_graph"):
        return predict_step(spec, hw, Batch.of(decode=[(s["batch"], s["ctx"])]),
                            "graph" if fam == "decode_step_graph" else "eager", dt)
    if fam == "prefill":
        return predict_step(spec, hw, Batch.of(prefill=[(s["batch"], s["len"])]), "eager", dt)
    if fam == "generation":
        return predict_generation(spec, hw, s["batch"], s["prompt"], s["new"], "eager", dt)
    if fam == "ffn_layer":
        return predict_layer(base, hw, "ffn", s["tokens"], None, dt, layer_mode)
    b = Batch.of(decode=[(s["batch"], s["ctx"])]) if "ctx" in s else Batch.of(prefill=[(s["batch"], s["len"])])
    return predict_layer(base, hw, "attn", b.tokens, b, dt, layer_mode)


def repredict(saved: str | Path, hardware: str, out: str | Path, command: str | None = None) -> dict[str, Any]:
    """A saved validation.json's measurements predicted again with `hardware` (no device, no
    torch): how another profile, or today's model, does on cases measured before."""
    from hwmodels.errors import load_mapping

    src = load_mapping(saved)
    if not isinstance(src.get("cases"), list) or not isinstance(src.get("meta"), dict):
        raise InputError(str(saved), "cases", "not a validation.json written by momentsim validate")
    hw = load_hardware(hardware)
    device = src["meta"].get("fingerprint", {}).get("device", "cpu")
    cases = []
    for c in src["cases"]:
        v = VCase(c["family"], c["model"], c["layers"], c["label"], c["shape"], c["measured_ms"], samples=c.get("samples", 0),
                  min_ms=c.get("min_ms") or float("nan"))
        v.predicted_ms = predict_case(c, hw, device, src["meta"].get("dtype"))
        cases.append(v)
    summ = family_summary(cases)
    meta = {**src["meta"], "hardware": hardware, "hardware_name": hw.name, "profile": hw.profile,
            "command": command or f"momentsim validate --repredict {saved} --hardware {hardware}",
            "repredicted_from": str(saved)}
    if isinstance(meta.get("probe"), dict):  # the machine's speed then, against this profile's calibration
        meta["probe"] = {**meta["probe"], "profile": profile_probe(hardware)}
    data = {"meta": meta, "summary": summ, "cases": [{**asdict(c), "err": round(c.err, 5)} for c in cases]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(_clean(data), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    (out / "validation.md").write_text(markdown(cases, summ, meta), encoding="utf-8")
    if cases:
        plots(cases, out, plot_title(src["meta"].get("fingerprint", {}), hw.name))
    return data


def cmd_validate(args: argparse.Namespace) -> int:
    """`momentsim validate --device cpu|cuda --hardware HW --out DIR [--quick] [--models a,b]`, or
    `momentsim validate --repredict SAVED.json --hardware HW --out DIR` (no device needed)."""
    command = "momentsim " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("momentsim") else None
    if getattr(args, "repredict", None):
        data = repredict(args.repredict, args.hardware, args.out, command)
        print(f"{args.repredict} predicted with {args.hardware} -> {Path(args.out) / 'validation.md'}")
        print("\n".join(summary_lines(data)))
        return 0
    from calibration.calibrate import check_device

    if not args.device:
        raise InputError("--device", "", "give --device cpu|cuda to measure, or --repredict SAVED.json")
    check_device(args.device)
    if args.quick and getattr(args, "wide", False):
        raise InputError("--wide", "", "give --quick or --wide, not both")
    load_hardware(args.hardware)  # a bad --hardware is an InputError before anything runs
    size = getattr(args, "size", None) or ("quick" if args.quick else "wide" if getattr(args, "wide", False) else "full")
    data = validate(args.device, args.hardware, args.out, size, args.models, command=command,
                    dtype=getattr(args, "dtype", None))
    out = Path(args.out)
    print(f"validation of {args.hardware} on {args.device}: {sum(s['cases'] for k, s in data['summary'].items() if k != 'all')} "
          f"cases, {data['meta']['seconds']:.0f} s -> {out / 'validation.md'}")
    if data["meta"].get("probe"):
        print("\n".join(speed_lines(data["meta"]["probe"], args.device)))
    print("\n".join(summary_lines(data)))
    return 0


__all__ = ["cmd_validate", "validate", "repredict", "predict_case", "predict_layer", "predict_step", "predict_generation",
           "layer_ops",
           "family_summary", "resolve_models", "shapes_for", "VCase", "Shapes"]
