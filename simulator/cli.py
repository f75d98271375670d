"""`momentsim`: the command line. A user's mistake ends with exit code 2 and one line."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable

from hwmodels.errors import InputError
from hwmodels.load import load_hardware
from hwmodels.spec import KV_FORMATS, WEIGHT_FORMATS
from simulator.moment.cost import check_parallelism, step_model
from simulator.moment.memory import check_fits, footprint
from simulator.moment.model import load_model
from simulator.moment.ops import Batch, Dtypes

SHAPE = re.compile(r"^\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*$")


def parse_shape(text: str, flag: str) -> tuple[int, int]:
    m = SHAPE.match(text)
    if not m:
        raise InputError(flag, text, "expected BxLEN, e.g. 16x4096 (batch x tokens)")
    b, n = int(m.group(1)), int(m.group(2))
    if b <= 0 or n <= 0:
        raise InputError(flag, text, "batch and length must be >= 1")
    return b, n


def _degree(text: str) -> int:
    """--tp / --pp: a whole number of devices, 1..1024 (the scenario schema's bound)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1024, got {text!r}") from None
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be from 1 to 1024, got {value}")
    return value


def _share(text: str) -> float:
    """--utilization: a share of the device's memory, in (0, 1] (more than all of it does not exist)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (a share of the device's memory), got {text}")
    return value


def _resolve(args: argparse.Namespace):
    model = load_model(args.model)
    hw = load_hardware(args.hardware)
    act = args.dtype if args.dtype != "fp8" else "bf16"
    weight = args.weight_dtype or ("fp8" if args.dtype == "fp8" else None)
    dt = Dtypes.of(model, weight, act, args.kv_dtype, plain=args.dtype)  # None: the checkpoint's own format
    ep = getattr(args, "ep", 1)
    if ep < 1:
        raise InputError("--ep", str(ep), "must be >= 1")
    imbalance = getattr(args, "moe_imbalance", 1.0)
    if not 1.0 <= imbalance <= 64.0:  # also false for nan
        raise InputError("--moe-imbalance", str(imbalance), "must be within 1 (balanced) and 64")
    try:
        check_parallelism(model, hw, args.tp, args.pp, ep)
    except ValueError as e:
        flag = next((f for f in ("pp", "ep") if str(e).startswith(f"{f}=")), "tp")
        raise InputError(f"--{flag}", str(getattr(args, flag)), str(e)) from None
    return model, hw, dt


def cmd_curves(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simulator.reports.outdir import out_dir, write_error
    from simulator.studies.curves import compute, parse_list, plot, table, write_csv

    lists = [parse_list(getattr(args, f), f"--{f}") for f in ("batch", "context", "prompt")]
    model, hw, dt = _resolve(args)
    with out_dir(Path(args.out) if args.out else None) as out:  # a bad --out fails before the work
        res = compute(model, hw, args.tp, args.pp, args.mode, dt, *lists, kernels=getattr(args, "kernels", "fused"))
        if out is not None:
            try:
                write_csv(res, out / "curves.csv")
                plot(res, out / "curves.png")
            except OSError as e:
                raise write_error(e, out) from None
    print(json.dumps(res) if args.json else table(res))
    if args.out and not args.json:
        print(f"\nwrote {out / 'curves.csv'} and {out / 'curves.png'}")
    return 0


def cmd_step(args: argparse.Namespace) -> int:
    model, hw, dt = _resolve(args)
    decode = [parse_shape(s, "--decode") for s in args.decode]
    prefill = [parse_shape(s, "--prefill") for s in args.prefill]
    if not decode and not prefill:
        raise InputError("--decode/--prefill", "", "give at least one, e.g. --decode 16x4096")
    longest = max([c + 1 for _, c in decode] + [n for _, n in prefill])
    tokens = sum(b for b, _ in decode) + sum(b * n for b, n in prefill)
    seqs_kv = sum(b * (c + 1) for b, c in decode) + sum(b * n for b, n in prefill)
    fp = check_fits(model, hw, args.tp, args.pp, dt, min_tokens=seqs_kv, where="--model/--hardware", ep=args.ep)
    sm = step_model(model, hw, args.tp, args.pp, args.mode, dt, args.async_scheduling, args.ep, args.moe_imbalance,
                    args.kernels)
    cost = sm.cost(Batch.of(decode=decode, prefill=prefill))
    out = cost.as_dict()
    if args.verbose:
        out["config"] = {"model": model.name, "hardware": hw.name, "profile": hw.profile, "tp": args.tp,
                         "pp": args.pp, "ep": args.ep, "moe_imbalance": args.moe_imbalance, "mode": args.mode,
                         "kernels": args.kernels, "dtypes": vars(dt), "tokens": tokens,
                         "longest_context": longest, "kernels_per_step": sm.kernels,
                         "clock_cycles": round(cost.step_ms * 1e-3 * hw.device.clock_ghz * 1e9)}
        out["memory"] = fp.as_dict()
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{model.name} on {hw.name} (tp={args.tp}, {args.mode}, {args.kernels} kernels): step {cost.step_ms:.3f} ms "
              f"(device {cost.device_ms:.3f} ms, host {cost.host_ms:.3f} ms)")
        for k, v in sorted(cost.breakdown_ms.items(), key=lambda kv: -kv[1]):
            if v > 0:
                print(f"  {k:13s} {v:9.3f} ms  {v / cost.step_ms:6.1%}")
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    model, hw, dt = _resolve(args)
    fp = footprint(model, hw, args.tp, args.pp, dt, args.utilization, ep=args.ep)
    out = {"model": model.name, "hardware": hw.name, "tp": args.tp, "pp": args.pp, "ep": args.ep,
           "weight_dtype": dt.weight, "expert_dtype": dt.experts, "kv_dtype": dt.kv,
           "params_b": round(model.num_params() / 1e9, 3),
           "active_params_b": round(model.num_params(active=True) / 1e9, 3), **fp.as_dict(),
           "fits": fp.kv_capacity_tokens > 0}
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:22s} {v}")
    if not fp.kv_capacity_tokens:
        check_fits(model, hw, args.tp, args.pp, dt, args.utilization, where="--model/--hardware", ep=args.ep)
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    """A serving stack's defaults as they resolve for a model on a part, each with its source."""
    from simulator.serving.scenario import STACK_NAMES
    from simulator.serving.stacks import PRESETS, describe

    if args.name not in STACK_NAMES:
        raise InputError("momentsim stack", args.name, f"unknown stack; allowed: {', '.join(STACK_NAMES)}")
    model, hw = load_model(args.model), load_hardware(args.hardware)
    if args.tp < 1:
        raise InputError("--tp", str(args.tp), "must be >= 1")
    out = describe(args.name, hw, model, args.tp, not args.offline)
    if args.json:
        print(json.dumps({"stack": args.name, "about": PRESETS[args.name].about, "model": model.name,
                          "hardware": hw.name, "defaults": out}))
        return 0
    print(f"{args.name}: {PRESETS[args.name].about}")
    print(f"for {model.name} on {hw.name}, tp {args.tp}, {'offline engine' if args.offline else 'API server'}")
    for k, v in out.items():
        val = v["value"]
        if k == "cuda_graph_sizes" and isinstance(val, list) and len(val) > 8:
            val = f"{len(val)} sizes: {', '.join(map(str, val[:5]))}, ..., {val[-1]}"
        print(f"  {k:24s} {val}")
        print(f"  {'':24s} source: {v['source']}")
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="preset name or path to config.json / YAML")
    p.add_argument("--hardware", required=True, help="preset, hardware YAML or calibration profile JSON")
    p.add_argument("--tp", type=_degree, default=1, help="tensor-parallel degree, 1..1024 (default 1)")
    p.add_argument("--pp", type=_degree, default=1, help="pipeline-parallel degree, 1..1024 (default 1)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32", "fp8"],
                   help="activations (fp8: fp8 weights with bf16 activations; default bf16)")
    p.add_argument("--weight-dtype", choices=WEIGHT_FORMATS,
                   help="every linear layer's weights (default: the checkpoint's quantization_config, else --dtype)")
    p.add_argument("--kv-dtype", choices=KV_FORMATS, help="KV cache, when not the --dtype")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_expert_args(p: argparse.ArgumentParser, imbalance: bool = True) -> None:
    p.add_argument("--ep", type=int, default=1,
                   help="expert parallelism: 1, or equal to --tp (whole experts per device; default 1)")
    if imbalance:
        p.add_argument("--moe-imbalance", type=float, default=1.0,
                       help="with --ep: the busiest device's routed tokens over the mean (default 1: balanced)")


KERNELS_HELP = ("the kernels each op launches: fused (default: a serving stack's, as vLLM, SGLang and TensorRT-LLM "
                "run them) or pytorch (plain eager PyTorch, nothing fused)")
MODE_HELP = "graph: CUDA graphs (one launch per step); eager: the host dispatches every kernel (default graph)"


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """Subcommands whose code lives elsewhere load only when used (calibration needs torch)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).__getattribute__(func)(args)

    return run


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"momentsim: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="momentsim", description="Simulate LLM inference on real and hypothetical hardware.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    p = sub.add_parser("step", help="the cost of one moment (prefill/decode step)")
    _add_model_args(p)
    p.add_argument("--mode", default="graph", choices=["graph", "eager"], help=MODE_HELP)
    p.add_argument("--kernels", default="fused", choices=["fused", "pytorch"], help=KERNELS_HELP)
    p.add_argument("--async-scheduling", action="store_true",
                   help="the host prepares the next step while the device runs this one")
    p.add_argument("--decode", action="append", default=[], metavar="BxCTX", help="B sequences with CTX cached")
    p.add_argument("--prefill", action="append", default=[], metavar="BxLEN", help="B prompts of LEN tokens")
    p.add_argument("-v", "--verbose", action="store_true", help="add config and memory to the JSON")
    _add_expert_args(p)
    p.set_defaults(func=cmd_step)

    p = sub.add_parser("memory", help="a model's memory footprint on a device")
    _add_model_args(p)
    _add_expert_args(p, imbalance=False)
    p.add_argument("--utilization", type=_share, default=0.9,
                   help="share of device memory for weights and KV cache, in (0, 1] (default 0.9)")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("curves", help="step time and its make-up vs batch, context and prompt length")
    _add_model_args(p)
    p.add_argument("--mode", default="graph", choices=["graph", "eager"], help=MODE_HELP)
    p.add_argument("--kernels", default="fused", choices=["fused", "pytorch"], help=KERNELS_HELP)
    p.add_argument("--batch", default="1,2,4,8,16,32,64,128,256", help="decode batch sizes, comma-separated")
    p.add_argument("--context", default="128,256,512,1024,2048,4096,8192,16384,32768",
                   help="decode contexts (tokens cached), comma-separated")
    p.add_argument("--prompt", default="128,256,512,1024,2048,4096,8192,16384",
                   help="prefill prompt lengths (batch 1), comma-separated")
    p.add_argument("--out", help="folder for curves.csv and curves.png")
    p.set_defaults(func=cmd_curves)

    p = sub.add_parser("run", help="simulate a serving scenario")
    p.add_argument("scenario", help="scenario YAML (fields: simulator/serving/scenario.py)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a scenario field as if written in the file, e.g. --set serving.max_batch_size=128 "
                        "(dotted path; VALUE is YAML; repeatable)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument("--out", help="folder for report.html, metrics JSON/CSV, plots and the trace")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_lazy("simulator.reports.run", "cmd_run"))

    p = sub.add_parser("stack", help="a serving stack's defaults for a model on a part, each with its source")
    p.add_argument("name", help="vllm, vllm-v1, vllm-v0, sglang, sglang-v0.4, sglang-v0.3, trtllm or trtllm-v0")
    p.add_argument("--model", default="llama-3.1-8b", help="preset name or config.json (default llama-3.1-8b)")
    p.add_argument("--hardware", default="h100-sxm", help="preset or hardware YAML (default h100-sxm)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    p.add_argument("--offline", action="store_true", help="an offline engine (vLLM's LLM class), not the API server")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("sweep", help="run a grid of scenarios")
    p.add_argument("sweep", help="sweep YAML: a base scenario, a grid and/or points (simulator/studies/sweep_schema.py)")
    p.add_argument("--out", help="results folder (default: out/<sweep name> next to the sweep file)")
    p.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per CPU)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the points on Ray: a local cluster, or the one at ADDRESS")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.set_defaults(func=_lazy("simulator.studies.sweep", "cmd_sweep"))

    p = sub.add_parser("plan", help="cheapest configuration that meets an SLO")
    p.add_argument("plan", help="plan YAML: model, workload, SLO, candidate parts, search (simulator/studies/plan_schema.py)")
    p.add_argument("--rate", type=float, default=None, help="target rate in requests/s, instead of the file's")
    p.add_argument("--slo", action="append", default=[], metavar="KEY=VALUE",
                   help="override an SLO field, e.g. --slo p99_ttft_ms=500 --slo headroom=0.2 (repeatable)")
    p.add_argument("--out", help="results folder (default: out/<plan name> next to the plan file)")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=_lazy("simulator.studies.plan_report", "cmd_plan"))

    p = sub.add_parser("calibrate", help="measure this machine with PyTorch (or refit saved measurements), "
                                         "write a profile")
    p.add_argument("--device", choices=["cpu", "cuda"], help="what to measure (with --refit: the kind it must be)")
    p.add_argument("--out", required=True, help="profile JSON to write (usable as --hardware)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repeats: under 5 minutes on 2 CPU cores")
    p.add_argument("--base", help="hardware preset the profile starts from")
    p.add_argument("--refit", metavar="RAW.json",
                   help="fit saved measurements again (a profile, or a JSON list of raw records); no GPU needed")
    p.set_defaults(func=_lazy("calibration.calibrate", "cmd_calibrate"))

    p = sub.add_parser("validate", help="measure whole layers and steps, compare with predictions")
    p.add_argument("--device", choices=["cpu", "cuda"], help="what to measure (not with --repredict)")
    p.add_argument("--repredict", metavar="SAVED.json",
                   help="predict a saved validation.json's measurements again with --hardware (no device)")
    p.add_argument("--hardware", required=True, help="profile JSON or preset to predict with")
    p.add_argument("--out", required=True, help="folder for the report (markdown, JSON, plots)")
    p.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    p.add_argument("--wide", action="store_true",
                   help="cases beyond the full set: batches to 256, contexts to 16k, prompts to 8k")
    p.add_argument("--models", default=None, help="comma-separated preset models")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="the reference decoder's weights, activations and KV (default fp32 on a CPU, bf16 on a GPU)")
    p.set_defaults(func=_lazy("calibration.validate", "cmd_validate"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return rc
    except InputError as e:
        print(f"momentsim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("momentsim: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # the budget check (simulator.serving.budget) is a lower bound: say it in one line
        print("momentsim: out of memory; run fewer requests (workload.num_requests) or give it more memory",
              file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader left (`| head`): not an error of ours. Point stdout at /dev/null so the
        # interpreter's last flush does not raise again, and exit as a process killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
