"""One Ray placement group for a job's actors: every engine, the reference, the reward service and every learner rank
reserve their CPUs and GPUs at once (as verl's resource pools do). A job short of GPUs stops before any engine loads,
and two jobs on one cluster never each hold part of what both need while waiting for the rest."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from stepentropy_rl.driver.remote import ActorLost

ROLE_KEYS = {"rollout": "cluster.rollout", "reference": "cluster.reference", "reward": "cluster.reward",
             "learner": "cluster.learner"}


def bundle(num_cpus: float, num_gpus: float = 0) -> dict[str, float]:
    """What one actor reserves, as a placement-group bundle (only the resources it asks for; Ray refuses zeros)."""
    return {k: float(v) for k, v in (("CPU", num_cpus), ("GPU", num_gpus)) if v}


def job_bundles(cfg, train: bool) -> list[tuple[str, dict[str, float]]]:
    """(role, bundle) for each actor of a job, in spawn order: one per engine, the reference, and for training the
    reward service and one per learner rank (``cluster.*``)."""
    c = cfg.cluster
    out = [("rollout", bundle(c.rollout.num_cpus, c.rollout.num_gpus))] * int(c.rollout.num_workers)
    out.append(("reference", bundle(c.reference.num_cpus, c.reference.num_gpus)))
    if train:
        out.append(("reward", bundle(c.reward.num_cpus)))
        out += [("learner", bundle(c.learner.num_cpus, c.learner.num_gpus))] * int(c.learner.world_size)
    return out


def total(bundles) -> dict[str, float]:
    """CPUs and GPUs that ``bundles`` ((role, bundle) pairs) reserve together."""
    return {k: sum(b.get(k, 0.0) for _, b in bundles) for k in ("CPU", "GPU")}


def describe(resources: dict) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))


@dataclass
class Placement:
    """A reserved placement group and which bundle each actor of each role takes; ``options`` places an actor in
    its bundle. An actor that reserves nothing has no bundle and is placed by Ray as any actor."""

    pg: Optional[object]
    slots: dict[str, list[Optional[int]]] = field(default_factory=dict)  # role -> bundle index per actor

    def options(self, role: str, i: int = 0) -> dict:
        """Actor (or task) options that schedule the ``i``-th actor of ``role`` into its bundle ({} without one)."""
        index = self.slots.get(role, [None] * (i + 1))[i] if self.pg is not None else None
        if index is None:
            return {}
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=index)}

    def release(self) -> None:
        """Give the reservation back; Ray ends the actors still in it (one it may restart is restarted, to wait for
        resources that never come, until it is killed or Ray shuts down). Idempotent."""
        if self.pg is not None:
            remove_placement_group(self.pg)
            self.pg = None


def reserve(bundles: list[tuple[str, dict[str, float]]], timeout_s: float, timeout_key: str) -> Placement:
    """Reserve ``bundles`` ((role, bundle) pairs) as one placement group (PACK: as few nodes as fit; on several nodes
    Ray does not promise which bundles share one, so the learner ranks may be split among them), waiting at most
    ``timeout_s`` (the config key ``timeout_key``) for the cluster to have room; then an error that names what the
    job reserves, what the cluster has and what is free, and nothing is left reserved."""
    slots: dict[str, list[Optional[int]]] = {}
    kept = []
    for role, b in bundles:
        slots.setdefault(role, []).append(len(kept) if b else None)
        if b:
            kept.append(b)
    if not kept:
        return Placement(None, slots)
    pg = placement_group(kept, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        need, have = total(bundles), ray.cluster_resources()
        small = any(need[k] > have.get(k, 0) + 1e-9 for k in need)
        why = "the cluster is too small for it" if small else \
            "another run holds the rest, or no node has room for one of the bundles"
        parts = []
        for role in slots:
            mine = [b for r, b in bundles if r == role]
            parts.append(f"{ROLE_KEYS.get(role, role)} {len(mine)} x {{{describe(mine[0])}}}")
        raise ActorLost(
            f"this job's actors found no room within {timeout_key}={timeout_s:g} s: they reserve "
            f"{describe(need)} together ({'; '.join(parts)}), the Ray cluster has {describe(have)}, "
            f"{describe(ray.available_resources())} free ({why}). Lower num_workers, world_size or the "
            f"num_cpus/num_gpus there, or free them") from None
    return Placement(pg, slots)


def reserve_job(cfg, train: bool) -> Placement:
    """Every actor of the job (``job_bundles``) in one placement group, waiting ``cluster.start_timeout_s``."""
    return reserve(job_bundles(cfg, train), cfg.cluster.start_timeout_s, "cluster.start_timeout_s")
