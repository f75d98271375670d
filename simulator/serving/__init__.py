"""Serving: the scenario schema, workloads, the paged KV cache and the SimPy engine that runs
replicas one moment at a time. Imports simulator.moment."""
