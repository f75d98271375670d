"""The one CUDA-graph capture helper of calibration (validate, reference, microbench).

A CUDA graph keeps raw device pointers, not references: a tensor the captured work reads or
writes that Python frees after capture is handed back to the caching allocator, the next
allocation lands there, and every replay then reads whatever it holds. That is how the first
CUDA validate run failed (`index_copy_(): index out of bounds`): the static inputs of a layer
(x, the positions, the RoPE rows) lived only in the closure of a lambda that the old helper
dropped once captured, so the positions the graph read were garbage.

`Captured` therefore owns everything the graph touches: the function (and with it its closure),
the static inputs it was given, and the outputs of the capture. On a device other than CUDA
it emulates the graph (capture runs the function once, replay runs it again), so the whole
graph path of `validate` runs on a CPU in a test, where an out-of-range index raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Captured:
    """`fn` captured once and replayed; `inputs` are the static tensors it reads (filled in
    place before each replay), kept alive for as long as the graph is."""

    def __init__(self, fn: Callable[[], Any], inputs: tuple[Any, ...] = (), device: str | torch.device = "cuda",
                 warmup: int = 2):
        self.fn = fn
        self.inputs = inputs
        self.device = torch.device(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        if self.device.type != "cuda":  # emulation: the same calls, run eagerly
            self.out = fn()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the capture (allocator, cuBLAS workspaces)
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn()

    def replay(self) -> Any:
        """Run the captured work again; returns the (static) outputs of the capture."""
        if self.graph is None:
            self.out = self.fn()
        else:
            self.graph.replay()
        return self.out

    __call__ = replay


__all__ = ["Captured"]
