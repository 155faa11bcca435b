"""A step-time model of data-parallel training: compute on the slowest rank plus one all-reduce.

    T(W) = o + c * E[max_r B_r] + R(W)

- ``o``: per-step time that does not shrink with more ranks (the optimizer's update of every
  parameter, the training loop's own work): Amdahl's serial part.
- ``c``: seconds of forward+backward (+ clipping) per example on one device; DP multiplies the
  non-private ``c`` by its engine's cost factor (measured in experiments/engines).
- ``B_r``: rank r's share of the logical batch. If each rank samples its own fixed shard at
  rate q (``independent_shares``), B_r is Binomial(N/W, q) and every rank waits at the
  all-reduce for the largest share (a straggler every step). Our samplers split the one global
  Poisson batch evenly instead, and fixed-size batches split evenly too: B_r = B/W.
- ``R(W)``: a ring all-reduce of the S gradient bytes, 2 (W-1)/W * S / bandwidth + 2 (W-1)
  latency, hierarchical over nodes: within a node at the intra-node bandwidth, then between
  ``nodes`` through each node's network link.
- ``overlap``: the fraction of R hidden under the backward pass (non-private DDP overlaps its
  bucketed all-reduce with backward; DP cannot, since the clipped sum exists only once the last
  example of the logical batch is done), bounded by the backward's share of the compute.

DP's communication per logical step equals non-private's (one gradient's bytes) while its
compute per example is larger, so its communication is a smaller share of each step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def ring_allreduce_s(nbytes: float, world: int, bandwidth: float, latency: float) -> float:
    """Seconds for a ring all-reduce of ``nbytes`` over ``world`` peers (0 on one)."""
    if world <= 1:
        return 0.0
    return 2 * (world - 1) / world * nbytes / bandwidth + 2 * (world - 1) * latency


def hierarchical_allreduce_s(
    nbytes: float,
    world: int,
    per_node: int,
    intra_bandwidth: float,
    inter_bandwidth: float,
    latency: float,
) -> float:
    """Within each node over its fast links, then across nodes over one network link each."""
    local = min(world, per_node)
    nodes = math.ceil(world / per_node)
    return ring_allreduce_s(nbytes, local, intra_bandwidth, latency) + ring_allreduce_s(
        nbytes, nodes, inter_bandwidth, latency
    )


def expected_max_share(
    dataset_size: int, batch: float, world: int, independent: bool = True, draws: int = 4000
) -> float:
    """E[max over ranks of the rank's share of the logical batch]: with ``independent`` shares
    (each rank samples its own shard) by Monte Carlo with a fixed seed, else E/W."""
    if not independent or world == 1:
        return batch / world
    shard = dataset_size // world
    rng = np.random.default_rng(0)
    shares = rng.binomial(shard, batch / dataset_size, size=(draws, world))
    return float(shares.max(axis=1).mean())


@dataclass
class Workload:
    """One method's cost on one device, and the cluster it runs on."""

    seconds_per_example: float
    gradient_bytes: float
    batch: int
    dataset_size: int
    independent_shares: bool = False
    overlap: float = 0.0  # share of the all-reduce hidden under backward (0 for DP)
    backward_share: float = 2 / 3
    step_overhead_s: float = 0.0

    def step_s(self, world: int, allreduce_s: float) -> float:
        compute = self.seconds_per_example * expected_max_share(
            self.dataset_size, self.batch, world, self.independent_shares
        )
        hidden = min(self.overlap * allreduce_s, self.backward_share * compute)
        return self.step_overhead_s + compute + allreduce_s - hidden

    def throughput(self, world: int, allreduce_s: float) -> float:
        """Examples per second of the whole job."""
        return self.batch / self.step_s(world, allreduce_s)


def fit_overhead(batch: int, examples_per_s: float, half_rate: float) -> tuple[float, float]:
    """(o, c) from one process's throughput at batch E and at E/2: T = o + c * B."""
    full, half = batch / examples_per_s, (batch / 2) / half_rate
    c = max((full - half) / (batch / 2), 0.0)
    return max(full - c * batch, 0.0), c
