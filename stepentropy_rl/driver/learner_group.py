"""Drives the learner ranks (one Ray placement group) as one process group: split batches, gather results."""
from __future__ import annotations

import ray
import torch
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from stepentropy_rl.batch import Batch, shard
from stepentropy_rl.driver.network import rendezvous

SUMMED = ("entropy_sum", "entropy_tokens")  # counts over the ranks' slices; every other metric is a rank mean


class LearnerGroup:
    """The driver's handle on ``world_size`` FSDP2 ranks (spawned by ``roles.spawn_learners``). Batches are split
    evenly by rank; results come back in the input order."""

    def __init__(self, ranks: list, pg, micro_batch_size: int, pad_id: int):
        self.ranks, self.pg, self.world_size = ranks, pg, len(ranks)
        self._at_rank0 = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        self.mbs, self.pad_id = micro_batch_size, pad_id

    def _split(self, batch: Batch) -> tuple[list[Batch], list[range]]:
        """Even row slices by rank. Every rank must run the same number of micro-batches (FSDP collectives), so the
        shorter slices get one padding copy with an empty loss mask."""
        if len(batch) < self.world_size:
            raise ValueError(f"a batch of {len(batch)} sequences cannot feed {self.world_size} learner ranks")
        rows = shard(len(batch), self.world_size)
        longest = len(rows[0])
        return [batch.select(r).padded_rows(longest - len(r)) for r in rows], rows

    def logprobs_and_entropy(self, batch: Batch, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """Columns ``logprobs`` and ``entropy`` ([B, T] like ``batch``) of its response tokens under the current
        policy at ``temperature`` (the one that sampled them)."""
        parts, rows = self._split(batch)
        outs = ray.get([r.logprobs_and_entropy.remote(p, self.mbs, temperature) for r, p in zip(self.ranks, parts)])
        return {k: torch.cat([o[k][: len(r)] for o, r in zip(outs, rows)]) for k in outs[0]}

    def train_step(self, batch: Batch, loss: dict) -> dict:
        """One optimizer step on every rank over its slice of ``batch``; metrics averaged over ranks (``SUMMED``
        ones added)."""
        parts, _ = self._split(batch)
        metrics = ray.get([r.train_step.remote(p, self.mbs, loss) for r, p in zip(self.ranks, parts)])
        return {k: sum(m[k] for m in metrics) / (1 if k in SUMMED else len(metrics)) for k in metrics[0]}

    def set_lr(self, lr: float) -> None:
        ray.get([r.set_lr.remote(lr) for r in self.ranks])

    def weight_specs(self) -> tuple[str, list]:
        return ray.get(self.ranks[0].weight_specs.remote())

    def open_weight_group(self, world_size: int, backend: str) -> tuple[str, ray.ObjectRef]:
        """A fresh rendezvous on rank 0's node (``network.rendezvous``); rank 0 starts hosting the weight-sync group
        there (the returned ref completes once every engine has joined)."""
        url = ray.get(rendezvous.options(scheduling_strategy=self._at_rank0).remote())
        return url, self.ranks[0].open_weight_group.remote(url, world_size, backend)

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
