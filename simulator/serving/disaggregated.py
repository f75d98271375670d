"""Disaggregated prefill and decode (`serving.disaggregated`), as DistServe, Splitwise, vLLM and
SGLang P/D and Dynamo run it: prompts are computed in a prefill pool, each prompt's KV cache moves
to a decode pool, and the decode pool generates the rest. Each pool has its own hardware, tp, pp,
replica count and scheduler (schedulers/disaggregated.py makes a policy prefill-only or
receiving).

A request arrives at the prefill pool (rejected up front if its prompt and output could never fit
a decode replica); its first token comes out when its prefill ends (TTFT counts to there). If it
wants more tokens, its KV is sent: over the prefill replica's network (or its device link within a
node), each of the min(prefill, decode) devices of the two replicas over its own NIC, one prompt
after another per prefill replica (a FIFO link: a transfer waits for the ones before it), taking
tokens x KV bytes per token / (devices x bandwidth), plus the path's latency. The prefill replica
keeps the prompt's blocks until the transfer ends. The decode pool's router then picks a replica,
whose scheduler admits the request when its blocks fit, straight into the decode set (no prefill).
The time from prefill end to decode arrival is in requests["kv_transfer_s"]; the decode engine
(decode_replica, decode_engine) and when it admitted the request (decode_admitted_s) give
metrics.itl the request's gap after its first token.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import simpy

from hwmodels.errors import InputError
from hwmodels.spec import Hardware
from simulator.serving.pool import R_KV, Pool, PoolModel, Replica
from simulator.serving.result import MomentLog, RequestLog
from simulator.serving.scenario import KVTransferSpec, Scenario
from simulator.serving.schedulers.disaggregated import KVReceiver, PrefillOnly


def transfer_path(spec: KVTransferSpec, hw: Hardware, where: str = "scenario") -> tuple[float, float]:
    """(bytes/s per device, latency in s) of the KV transfer: the spec's numbers, else the prefill
    hardware's network or link."""
    link = hw.network if spec.path == "network" else hw.link
    if link is None and (spec.bw_gbps is None or spec.latency_us is None):
        raise InputError(where, "serving.disaggregated.transfer", f"{hw.name} names no {spec.path}: give "
                         "bw_gbps and latency_us, or path: " + ("link" if spec.path == "network" else "network"))
    bw = spec.bw_gbps if spec.bw_gbps is not None else link.bw_gbps
    lat = spec.latency_us if spec.latency_us is not None else link.latency_us
    return bw * 1e9, lat * 1e-6


class Disaggregation:
    """A prefill pool, a decode pool and the KV transfer between them; `submit(i)` is a request's
    way in."""

    def __init__(self, env: simpy.Environment, sc: Scenario, pools: list[PoolModel], requests: RequestLog,
                 progress: Callable[[float], None] | None):
        pre, dec = pools
        self.env, self.requests = env, requests
        self.prefill = Pool(env, pre, requests, MomentLog(pre.cost, requests, progress, pre.power), sc.seed,
                            "prefill", 0, (PrefillOnly,))
        self.decode = Pool(env, dec, requests, MomentLog(dec.cost, requests, progress, dec.power), sc.seed,
                           "decode", pre.serving.replicas, (KVReceiver,))
        self.pools = [self.prefill, self.decode]
        bw, self.latency_s = transfer_path(sc.serving.disaggregated.transfer, pre.hw)
        lanes = min(pre.serving.tp * pre.serving.pp, dec.serving.tp * dec.serving.pp)
        kv = pre.cost.model.kv_bytes_per_token(pre.serving.kv_dtype)  # all layers and heads of a token
        self.s_per_token = kv / (lanes * bw)
        self.free_at = [0.0] * pre.serving.replicas  # when each prefill replica's link is free
        n = len(requests)
        requests.extra["decode_replica"] = self.decode_replica = np.full(n, -1, dtype=np.int64)
        requests.extra["kv_transfer_s"] = self.transfer_s = np.full(n, np.nan)
        requests.extra["decode_engine"] = self.decode_engine = np.zeros(n, dtype=np.int16)
        requests.extra["decode_admitted_s"] = admitted = np.full(n, np.nan)
        for r in self.prefill.engines:
            r.scheduler.handoff = self._sender(r)
        for r in self.decode.engines:
            r.scheduler.admitted_s, r.scheduler.now = admitted, lambda: env.now

    def submit(self, i: int) -> None:
        rq = self.requests
        n = rq.prompt_len[i] + rq.output_len[i]
        if self.decode.cap_tokens < n <= self.prefill.max_len:  # it could never decode (longer than the
            rq.reject(i, R_KV, self.env.now)                     # model serves: the prefill pool says so)
        else:
            self.prefill.submit(i)

    def _sender(self, replica: Replica) -> Callable[[int, int, int, Callable[[], None]], None]:
        def send(i: int, tokens: int, generated: int, sent: Callable[[], None]) -> None:
            env = self.env
            now = env.now
            wait = max(0.0, self.free_at[replica.rid] - now)  # behind earlier prompts on this link
            send = tokens * self.s_per_token
            self.free_at[replica.rid] = now + wait + send
            self.transfer_s[i] = delay = wait + send + self.latency_s
            ev = env.timeout(delay)
            ev.callbacks.append(lambda _ev: self._arrived(replica, i, tokens, generated, sent))
        return send

    def _arrived(self, sender: Replica, i: int, tokens: int, generated: int, sent: Callable[[], None]) -> None:
        sent()
        sender.poke()  # its blocks are free: it may admit what waited for them
        pool = self.decode
        r = pool.engines[pool.router.route(i)]
        self.decode_replica[i] = r.rid + pool.replica_offset
        self.decode_engine[i] = r.eng
        r.scheduler.receive(i, tokens, generated)
        r.poke()


__all__ = ["Disaggregation", "transfer_path"]
