"""Drives the learner ranks (each in its placement-group bundle) as one process group: split batches, gather
results."""
from __future__ import annotations

import ray
import torch

from stepentropy_rl.batch import Batch, shard
from stepentropy_rl.driver.network import rendezvous
from stepentropy_rl.driver.remote import ActorLost

SUMMED = ("entropy_sum", "entropy_tokens")  # counts over the ranks' slices; every other metric is a rank mean


class LearnerGroup:
    """The driver's handle on ``world_size`` FSDP2 ranks (spawned by ``roles.spawn_learners``). Batches are split
    evenly by rank; results come back in the input order. ``at_rank0``: task options that place a task in rank 0's
    bundle; ``placement``: the ranks' own placement group, given back on ``shutdown`` (None inside the job's)."""

    def __init__(self, ranks: list, at_rank0: dict, micro_batch_size: int, pad_id: int, placement=None):
        self.ranks, self.world_size, self.placement = ranks, len(ranks), placement
        self._at_rank0 = at_rank0
        self.mbs, self.pad_id = micro_batch_size, pad_id

    # ---- a dead rank -----------------------------------------------------------------------------------------------
    def _get(self, refs: list, what: str) -> list:
        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise self.lost(e, what) from e

    def lost(self, err: Exception, what: str) -> Exception:
        """For an error that names a dead rank: every rank stopped (the others would wait for it in a collective)
        and an ``ActorLost`` that names it; any other error comes back unchanged."""
        dead = [i for i, r in enumerate(self.ranks) if r._actor_id.hex() == getattr(err, "actor_id", None)]
        if not dead:
            return err
        for r in self.ranks:
            ray.kill(r, no_restart=True)
        return ActorLost(f"learner rank {dead[0]} of {self.world_size} died during {what} "
                         f"({type(err).__name__}); its process group cannot go on, so the run stops. Rerun the same "
                         "command to resume from the last checkpoint.")

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
        outs = self._get([r.logprobs_and_entropy.remote(p, self.mbs, temperature) for r, p in zip(self.ranks, parts)],
                         "scoring")
        return {k: torch.cat([o[k][: len(r)] for o, r in zip(outs, rows)]) for k in outs[0]}

    def train_step(self, batch: Batch, loss: dict) -> dict:
        """One optimizer step on every rank over its slice of ``batch``; metrics averaged over ranks (``SUMMED``
        ones added)."""
        parts, _ = self._split(batch)
        metrics = self._get([r.train_step.remote(p, self.mbs, loss) for r, p in zip(self.ranks, parts)],
                            "a training step")
        return {k: sum(m[k] for m in metrics) / (1 if k in SUMMED else len(metrics)) for k in metrics[0]}

    def set_lr(self, lr: float) -> None:
        self._get([r.set_lr.remote(lr) for r in self.ranks], "set_lr")

    def reset_optimizer(self) -> None:
        self._get([r.reset_optimizer.remote() for r in self.ranks], "reset_optimizer")

    def weight_specs(self) -> tuple[str, list]:
        return self._get([self.ranks[0].weight_specs.remote()], "weight_specs")[0]

    def open_weight_group(self, world_size: int, backend: str, timeout_s: float = 600.0) -> tuple[str, ray.ObjectRef]:
        """A fresh rendezvous on rank 0's node (``network.rendezvous``); rank 0 starts hosting the weight-sync group
        there (the returned ref completes once every engine has joined)."""
        url = ray.get(rendezvous.options(**self._at_rank0).remote())
        return url, self.ranks[0].open_weight_group.remote(url, world_size, backend, timeout_s)

    def push_weights(self, plan: list) -> list[ray.ObjectRef]:
        """Start a weight push on every rank (the engines must receive at the same time); refs to the bytes sent."""
        return [r.push_weights.remote(plan) for r in self.ranks]

    def state_bytes(self) -> bytes:
        return self._get([r.state_bytes.remote() for r in self.ranks], "state_bytes")[0]

    def save_hf(self, path: str, tokenizer_path: str) -> None:
        self._get([r.save_hf.remote(path, tokenizer_path) for r in self.ranks], "saving the model")

    def save_checkpoint(self, path: str) -> None:
        self._get([r.save_checkpoint.remote(path) for r in self.ranks], "saving a checkpoint")

    def load_checkpoint(self, path: str) -> None:
        self._get([r.load_checkpoint.remote(path) for r in self.ranks], "loading a checkpoint")

    def shutdown(self) -> None:
        """Close the process group on every rank and release them; ranks already dead are passed over."""
        try:
            ray.get([r.shutdown.remote() for r in self.ranks], timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        finally:
            for r in self.ranks:
                ray.kill(r)
            if self.placement is not None:
                self.placement.release()
