"""Drives the learner ranks (one Ray placement group) as one process group: split batches, gather results."""
from __future__ import annotations

import socket

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from stepentropy_rl.batch import Sequence, micro_batches, response_values, shard

SUMMED = ("entropy_sum", "entropy_tokens")  # counts over the ranks' slices; every other metric is a rank mean


@ray.remote(num_cpus=0)
def free_address() -> tuple[str, int]:
    """An address and free port on the node that runs rank 0 (scheduled into its bundle)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


class LearnerGroup:
    """The driver's handle on ``world_size`` FSDP2 ranks (spawned by ``roles.spawn_learners``). Batches are split
    evenly by rank; results come back in the input order."""

    def __init__(self, ranks: list, pg, micro_batch_size: int, pad_id: int):
        self.ranks, self.pg, self.world_size = ranks, pg, len(ranks)
        self._at_rank0 = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        self.mbs, self.pad_id = micro_batch_size, pad_id

    def _split(self, seqs: list[Sequence]) -> list[list[Sequence]]:
        """Even slices by rank. Every rank must run the same number of micro-batches (FSDP collectives), so the
        shorter slices get one padding copy with an empty response (zero loss mask)."""
        if len(seqs) < self.world_size:
            raise ValueError(f"a batch of {len(seqs)} sequences cannot feed {self.world_size} learner ranks")
        parts = shard(seqs, self.world_size)
        longest = len(parts[0])
        pad = Sequence(seqs[0].prompt_ids, [], {k: [] for k in seqs[0].values})
        return [p + [pad] * (longest - len(p)) for p in parts]

    def logprobs_and_entropy(self, seqs: list[Sequence], temperature: float = 1.0
                             ) -> tuple[list[list[float]], list[list[float]]]:
        """Per sequence, log-probs and exact entropies of its response tokens under the current policy at
        ``temperature`` (the one that sampled them)."""
        parts = self._split(seqs)
        outs = ray.get([r.logprobs_and_entropy.remote(micro_batches(p, self.mbs, self.pad_id), temperature)
                        for r, p in zip(self.ranks, parts)])
        lps, ents = [], []
        for p, real, out in zip(parts, shard(seqs, self.world_size), outs):
            for i, res in enumerate(out):
                chunk = p[i * self.mbs: (i + 1) * self.mbs]
                lps += response_values(res["logprobs"], chunk)
                ents += response_values(res["entropy"], chunk)
            drop = len(p) - len(real)  # padding copies sit at the end of each slice
            if drop:
                del lps[-drop:], ents[-drop:]
        return lps, ents

    def train_step(self, seqs: list[Sequence], loss: dict) -> dict:
        parts = self._split(seqs)
        metrics = ray.get([r.train_step.remote(micro_batches(p, self.mbs, self.pad_id), loss)
                           for r, p in zip(self.ranks, parts)])
        return {k: sum(m[k] for m in metrics) / (1 if k in SUMMED else len(metrics)) for k in metrics[0]}

    def set_lr(self, lr: float) -> None:
        ray.get([r.set_lr.remote(lr) for r in self.ranks])

    def weight_specs(self) -> tuple[str, list]:
        return ray.get(self.ranks[0].weight_specs.remote())

    def open_weight_group(self, world_size: int, backend: str) -> tuple[str, int, ray.ObjectRef]:
        """A fresh address on rank 0's node; rank 0 starts hosting the weight-sync group there (the returned ref
        completes once every engine has joined)."""
        host, port = ray.get(free_address.options(scheduling_strategy=self._at_rank0).remote())
        return host, port, self.ranks[0].open_weight_group.remote(host, port, world_size, backend)

    def push_weights(self, plan: list) -> list[ray.ObjectRef]:
        """Start a weight push on every rank (the engines must receive at the same time); refs to the bytes sent."""
        return [r.push_weights.remote(plan) for r in self.ranks]

    def state_bytes(self) -> bytes:
        return ray.get([r.state_bytes.remote() for r in self.ranks])[0]

    def save_hf(self, path: str, tokenizer_path: str) -> None:
        ray.get([r.save_hf.remote(path, tokenizer_path) for r in self.ranks])

    def save_checkpoint(self, path: str) -> None:
        ray.get([r.save_checkpoint.remote(path) for r in self.ranks])

    def load_checkpoint(self, path: str) -> None:
        ray.get([r.load_checkpoint.remote(path) for r in self.ranks])

    def shutdown(self) -> None:
        try:
            ray.get([r.shutdown.remote() for r in self.ranks], timeout=30)
        finally:
            for r in self.ranks:
                ray.kill(r)
            remove_placement_group(self.pg)
