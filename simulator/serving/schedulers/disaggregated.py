"""Disaggregated prefill and decode (serving/disaggregated.py): the two mixins that make any
policy a prefill pool's or a decode pool's scheduler.

PrefillOnly: a finished prompt (its first token out) is handed to the KV transfer instead of the
decode set; its blocks stay on the prefill replica until the transfer has sent them, as the
decode side pulls them from there (vLLM's NIXL connector, DistServe), and meanwhile count as
`in_flight`.

KVReceiver: a request arrives with its prompt's KV already computed. It waits in the queue as a
swapped-out request does and enters the decode set when its blocks fit; the copy came over the
network (charged by the transfer), so no host copy is charged for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from simulator.serving.schedulers.base import Prefill


class PrefillOnly:
    """Mixin (before the policy in the bases) of a prefill pool's schedulers."""

    handoff: Callable[[int, int, int, Callable[[], None]], None]
    """handoff(request, tokens cached, tokens generated, sent): start the KV transfer; it calls
    sent() when the KV has left. Set by the deployment."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight = 0

    def _prefilled(self, st: Prefill, now: float) -> None:
        i = st.request
        if st.generated == 0:
            self.requests.first_token(i, now)
        g = st.generated + 1
        if g >= self.output_len[i]:  # a one-token reply needs no decode
            self._release(i, st.target, st.prefix_blocks, st.prefix_id)
            self._finish(i, now)
            return
        self.outstanding -= 1
        self.in_flight += 1
        self.handoff(i, st.target, g, lambda: self._sent(st))

    def _sent(self, st: Prefill) -> None:
        self._release(st.request, st.target, st.prefix_blocks, st.prefix_id)
        self.in_flight -= 1


class KVReceiver:
    """Mixin (before the policy in the bases) of a decode pool's schedulers."""

    now: Callable[[], float]
    """The engine's clock. Set by the deployment."""
    admitted_s: np.ndarray
    """Per request: when this engine admitted it into its decode set (the start of the moment being
    planned, so its first token here comes at the end of the engine's first streaming moment from
    then on); NaN if never, or if preempted by recompute before its first decode step here (its
    re-prefill's token is then a newcomer's, as on a colocated engine). Set by the deployment; it
    gives metrics.itl a request's gap from its first token, transfer and wait included."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: set[int] = set()
        self.fresh: dict[int, int] = {}  # admitted, no decode step here yet: request -> its decode admission token

    def receive(self, i: int, cached: int, generated: int) -> None:
        """Request i arrives with `cached` tokens of KV and `generated` tokens out."""
        self.swapped[i] = (cached, generated)
        self.received.add(i)
        self.add(i)

    def _swap_in(self, i: int, n_seq: int) -> bool:
        if i not in self.received and i not in self.fresh:
            return super()._swap_in(i, n_seq)
        before = self.swap_s
        if not super()._swap_in(i, n_seq):
            return False
        if i in self.received:
            self.swap_s = before  # its KV came over the transfer, not from host memory
            self.received.discard(i)
        self._forget_decoded()
        self.fresh[i] = self.admissions
        self.admitted_s[i] = self.now()
        return True

    def _preempt_one(self) -> bool:
        fresh = self.fresh
        if not fresh:
            return super()._preempt_one()
        self._forget_decoded()
        if not super()._preempt_one():
            return False
        for i, token in list(fresh.items()):
            if not self.decode.holds(i, token) and i not in self.swapped:  # by recompute, before its first step
                self.admitted_s[i] = np.nan
                del fresh[i]
        return True

    def _forget_decoded(self) -> None:
        """Keep only the admitted requests still waiting for their first decode step here (in the
        decode set, or swapped out since: admitted again when they come back). Run on admissions
        and preemptions, never per moment."""
        d, fresh = self.decode, self.fresh
        for i, token in list(fresh.items()):
            e = d.entries.get(i)
            if e is not None and e.token == token:
                if e.step < d.step:
                    del fresh[i]
            elif i not in self.swapped:  # finished
                del fresh[i]
