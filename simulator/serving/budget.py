"""How much of this machine's memory a run needs, checked before it starts.

A run keeps a few arrays per request and a few columns per moment (the moment log), so its
memory is about `n x BYTES_PER_REQUEST + moments x BYTES_PER_MOMENT`. The number of moments is
known only after the run, so the check uses a lower bound on it (every moment serves at most
max_batch_size sequences one token each, or max_batched_tokens of prompt): a run refused here
could never have fitted; one that passes may still run out, and then ends as one line too.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path

from hwmodels.errors import InputError
from simulator.serving.scenario import Scenario

# Measured with benchmarks/bench_memory.py: peak RSS of simulate + summarize + write_outputs
# (as run --out), less the interpreter's and the libraries', per request and per moment.
BYTES_PER_REQUEST = 136  # 117 before the TTFT split's two times and the priorities and classes per request
BYTES_PER_MOMENT = 108   # 83 before the gaps between tokens' three columns (decodes, firsts, held) and energy's
#                          two (decode context, energy); a moment with prefill logs 32 bytes more
BYTES_PER_ENGINE = 64 * 1024  # one replica's (or virtual engine's) scheduler state, its block residues


def least_moments(sc: Scenario) -> int:
    """A lower bound on the moments of a run: decode tokens over the batch cap, plus prompt
    tokens over the token budget (a trace's lengths count as one token each)."""
    w, s = sc.workload, sc.serving
    out = (w.output_len.expected() or 1.0) * w.num_requests
    prompt = (w.prompt_len.expected() or 1.0) * w.num_requests
    return math.ceil(out / s.max_batch_size + prompt / s.max_batched_tokens)


def needed_bytes(sc: Scenario) -> int:
    s = sc.serving
    engines = s.replicas * s.pp
    if s.disaggregated is not None:  # both pools' engines
        engines = sum((part.replicas or s.replicas) * (part.pp or s.pp)
                      for part in (s.disaggregated.prefill, s.disaggregated.decode))
    return (sc.workload.num_requests * BYTES_PER_REQUEST + least_moments(sc) * BYTES_PER_MOMENT
            + engines * (BYTES_PER_ENGINE + 8 * s.block_size))


def available_bytes() -> float:
    """What this process may still take: the least of the address-space limit (ulimit -v) less
    what is mapped, the cgroup's limit less its usage, and the machine's available memory."""
    room = math.inf
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        room = min(room, soft - _status_kib("VmSize") * 1024)
    cg = Path("/sys/fs/cgroup")
    try:
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            room = min(room, int(limit) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = min(room, int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return room


def _status_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def check_memory(sc: Scenario, where: str) -> None:
    """One InputError line when the run cannot fit in the memory this process may use."""
    need, room = needed_bytes(sc), available_bytes()
    if need <= room:
        return
    n = sc.workload.num_requests
    fit = max(0, int(n * room / need))
    raise InputError(where, "workload.num_requests",
                     f"{n:,} requests need at least {need / 1e9:.2f} GB of memory here ({BYTES_PER_REQUEST} bytes "
                     f"each and {least_moments(sc):,}+ moments), but {max(room, 0) / 1e9:.2f} GB is available; "
                     f"at most about {fit:,} requests could fit")
