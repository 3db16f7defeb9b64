"""Ray start-up and the one place that spawns every role (rollout engines, reference, reward service, learner
ranks), placed as ``conf/cluster`` says: each in its bundle of the job's placement group (``placement``) where one is
given."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import ray

from stepentropy_rl.config import ClusterConfig, JobConfig, LearnerCluster, OptimConfig
from stepentropy_rl.driver.learner_group import LearnerGroup
from stepentropy_rl.driver.network import use_loopback_only
from stepentropy_rl.driver.placement import Placement, bundle, describe, job_bundles, reserve, total
from stepentropy_rl.driver.rollout_group import RolloutGroup
from workers.board import BoardWorker
from workers.learner import LearnerWorker
from workers.reference import ReferenceWorker
from workers.reward import RewardWorker
from workers.rollout import RolloutWorker

log = logging.getLogger(__name__)


@dataclass
class Actors:
    """Every role of a training run: the rollout group, the reference and reward actors, the learner group."""

    rollouts: RolloutGroup
    reference: object
    reward: object
    learners: LearnerGroup


def init_ray(cluster: ClusterConfig, namespace: str | None = None) -> bool:
    """Join ``cluster.address`` (or RAY_ADDRESS) if set, else start a local Ray with the dashboard on 127.0.0.1,
    listening on loopback only unless ``cluster.loopback_only`` is false (``network.use_loopback_only``).
    ``namespace``: the run's, so its actors' names (``rollout-0``, ``learner-1``, ...) are its own on a shared cluster.
    Returns whether it started (or joined) Ray here; False when this process was already in a Ray session (a Ray
    task of ``hydra/launcher=ray``), which then must not be shut down by the run: its actors still get the run's
    namespace (``named``) and are released by ``release_actors``.

    The project's packages travel with the job (Ray's ``runtime_env`` ``py_modules``), so a worker on any node
    imports the driver's code, not whatever that node has installed.
    """
    global _namespace
    _namespace = namespace
    if ray.is_initialized():
        return False
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    env = runtime_env()
    if address:
        ctx = ray.init(address=address, runtime_env=env, log_to_driver=True, namespace=namespace)
    else:
        if cluster.loopback_only:
            env["env_vars"].update(use_loopback_only())
        ctx = ray.init(num_cpus=cluster.num_cpus, include_dashboard=cluster.include_dashboard,
                       dashboard_host=cluster.dashboard_host, runtime_env=env, log_to_driver=True,
                       namespace=namespace)
    url = getattr(ctx, "dashboard_url", None)
    log.info("Ray dashboard: %s", f"http://{url}" if url else "(off)")
    node = next((n for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")), None)
    if node:  # Prometheus format: the run's gauges (stepentropy_*) with Ray's own
        log.info("Ray metrics: http://%s:%s/metrics", node["NodeManagerAddress"], node["MetricsExportPort"])
    return True


_namespace: str | None = None  # the run's Ray namespace (``init_ray``)


def named(name: str) -> dict:
    """Actor options naming it ``name`` (the dashboard lists actors by it) in the run's namespace, or ``name.2``, ...
    when an actor there holds the name already (a second group spawned in one session)."""
    ns = _namespace or ray.get_runtime_context().namespace
    taken = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns}
    i, out = 1, name
    while out in taken:
        i += 1
        out = f"{name}.{i}"
    return {"name": out, "namespace": ns}


def release_actors() -> int:
    """Kill the actors of the run's namespace: a run inside a Ray task does not shut Ray down, and the session
    outlives it (``hydra/launcher=ray``). Returns how many were killed."""
    if _namespace is None or not ray.is_initialized():
        return 0
    mine = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == _namespace]
    for name in mine:
        try:
            ray.kill(ray.get_actor(name, namespace=_namespace))
        except ValueError:
            pass  # gone already
    return len(mine)


def runtime_env() -> dict:
    """Ship ``stepentropy_rl`` and ``workers`` to every node with the job; no tokenizer thread pools in actors, and no
    Hugging Face progress bars in them (each would print one line per weight load; the driver draws the bars)."""
    import stepentropy_rl
    import workers

    modules = [os.path.dirname(os.path.abspath(m.__file__)) for m in (stepentropy_rl, workers)]
    return {"py_modules": modules, "env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}}


@ray.remote(num_cpus=0)
def _write_probe(path: str, token: str) -> str:
    """On one node: read the driver's probe in ``path`` and write this node's answer beside it."""
    import pathlib

    probe = pathlib.Path(path)
    seen = (probe / "driver").read_text() if (probe / "driver").exists() else ""
    (probe / token).write_text(seen)
    return ray.get_runtime_context().get_node_id()


def check_shared_run_dir(run_dir, writer=None) -> None:
    """Fail fast unless every alive Ray node sees ``run_dir``: rank 0 writes checkpoints and models there and the
    driver reads them, so on a multi-node cluster it must be a shared filesystem (NFS, a cloud bucket mount...).

    A task pinned to each node reads a file the driver wrote and writes one back; ``writer(node_id, path, token)``
    replaces that task in tests.
    """
    import pathlib
    import uuid

    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = pathlib.Path(run_dir) / ".shared_check"
    probe.mkdir(parents=True, exist_ok=True)
    nonce = uuid.uuid4().hex
    (probe / "driver").write_text(nonce)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if writer is None:
        def writer(node, path, token):
            strategy = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
            return ray.get(_write_probe.options(scheduling_strategy=strategy).remote(path, token))
    missing = []
    for i, node in enumerate(nodes):
        token = f"node{i}"
        writer(node, str(probe), token)
        if not (probe / token).exists() or (probe / token).read_text() != nonce:
            missing.append(node)
    shutil.rmtree(probe, ignore_errors=True)
    if missing:
        raise RuntimeError(
            f"run_dir {str(run_dir)!r} is not shared with Ray node(s) {', '.join(m[:12] for m in missing)}: "
            "learner rank 0 writes checkpoints and models there and the driver reads them. Point run_dir at a "
            "filesystem every node mounts at the same path (see README, 'On a Ray cluster').")


def spawn_board():
    """The run's progress board (``workers/board.py``), named ``progress``: no CPU, the driver's bars read it."""
    return BoardWorker.options(num_cpus=0, **named("progress")).remote()


def spawn_rollouts(cfg: JobConfig, model_path: str, placement: Placement | None = None) -> RolloutGroup:
    """``cluster.rollout.num_workers`` vLLM engines serving ``model_path``, as one ``RolloutGroup``."""
    c, at = cfg.cluster.rollout, placement or Placement(None)
    # No automatic task retries: a restarted engine serves the initial weights, so the group restores what it
    # served before retrying (RolloutGroup.generate).
    engines = [RolloutWorker.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, max_restarts=c.max_restarts,
                                     max_task_retries=0, **thread_env(c.threads), **named(f"rollout-{i}"),
                                     **at.options("rollout", i)).remote(
        model_path, dict(cfg.rollout.engine), seed, cfg.rollout.kv_cache_gib, cfg.rollout.log_level)
        for i, seed in enumerate(engine_seeds(cfg.rollout.seed, int(c.num_workers)))]
    return RolloutGroup(engines, model_path)


def engine_seeds(seed: int, n: int) -> list[int]:
    """Engine i samples with ``seed + i`` (one engine: ``rollout.seed`` itself). One seed in every engine drew the
    same random numbers in each, so the prompts the group splits over them were sampled with correlated noise.

    >>> engine_seeds(0, 1), engine_seeds(7, 3)
    ([0], [7, 8, 9])
    """
    return [int(seed) + i for i in range(n)]


def spawn_reference(cfg: JobConfig, model_path: str, placement: Placement | None = None):
    """The frozen reference model (exact entropies for pruning, log-probs for the KL), on the GPU it reserves; Ray
    restarts a dead one (it reloads ``model_path``) and retries the call."""
    c = cfg.cluster.reference
    at = (placement or Placement(None)).options("reference")
    return ReferenceWorker.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, max_restarts=c.max_restarts,
                                   max_task_retries=c.max_restarts, **thread_env(c.threads), **named("reference"),
                                   **at).remote(model_path, cfg.reference.dtype, reference_device(c.num_gpus))


def workers_runtime(rollouts: RolloutGroup, reference) -> dict:
    """A job's ``CoTCache`` runtime: each engine's ``runtime_tag`` and the reference's, as their own nodes report
    them (the driver's node may have another CPU, or no GPU)."""
    return {"engines": rollouts.runtime_tags(), "reference": ray.get(reference.runtime_tag.remote())}


def thread_env(threads: int) -> dict:
    """Actor options that give it ``threads`` OpenMP threads (-1: every core of this machine; 0: Ray's default).

    Ray starts an actor that reserves a fractional CPU with ``OMP_NUM_THREADS=1``, and torch reads it when it loads,
    before the actor's own code runs: on 2 cores the vLLM engine generated at 2136 tokens/s so, 3822 with 2 threads.
    """
    n = len(os.sched_getaffinity(0)) if threads == -1 else threads
    return {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(n)}}} if n else {}


def reference_device(num_gpus: float) -> str:
    """The reference scores on the GPU it reserves (a 7B model on CPU would take minutes a GRPO step)."""
    return "cuda" if num_gpus else "cpu"


def spawn_reward(cfg: JobConfig, skip_id: int, close_id: int, placement: Placement | None = None):
    """The reward service: grades with ``data.grader`` on ``data.grade_span`` and scores every ``reward`` term;
    ``skip_id`` and ``close_id`` are the policy tokenizer's ids of ``[SKIP]`` and ``</think>``. It keeps no state, so
    Ray restarts a dead one and retries the call."""
    c = cfg.cluster.reward
    at = (placement or Placement(None)).options("reward")
    return RewardWorker.options(num_cpus=c.num_cpus, max_restarts=c.max_restarts,
                                max_task_retries=c.max_restarts, **named("reward"), **at).remote(
        cfg.reward, cfg.data, skip_id, close_id, cfg.trainer.prune.delimiter)


def needed_resources(cfg: JobConfig, train: bool) -> dict[str, float]:
    """CPUs and GPUs the job's actors reserve together: the engines and the reference, and for training the reward
    service and the learners too (they all live until the run ends)."""
    return total(job_bundles(cfg, train))


def short_resources(cfg: JobConfig, train: bool, have: dict | None = None) -> str | None:
    """What the job reserves beyond the cluster's resources ``have`` (``ray.cluster_resources()``), or None: its
    placement group would wait for resources that never come (an autoscaler may still add them, so the caller
    warns)."""
    have = ray.cluster_resources() if have is None else have
    need = needed_resources(cfg, train)
    short = {k: v for k, v in need.items() if v > have.get(k, 0) + 1e-9}
    if not short:
        return None
    return (f"this job reserves {describe(need)} (cluster.rollout, cluster.reference"
            f"{', cluster.reward, cluster.learner' if train else ''}) but the Ray cluster has {describe(have)}: "
            f"it will wait until more join, at most cluster.start_timeout_s (lower the num_cpus/num_gpus, world_size "
            f"or num_workers there)")


def spawn_learners(model_path: str, learner: LearnerCluster, optim: OptimConfig, micro_batch_size: int,
                   pad_id: int, placement: Placement | None = None, start_timeout_s: float = 600.0) -> LearnerGroup:
    """``learner.world_size`` FSDP2 ranks (``cluster.learner``), each in its bundle of ``placement`` (the job's), or
    of a placement group of their own reserved here (waiting at most ``start_timeout_s``), meeting at a rendezvous
    on rank 0's node (``network.rendezvous``)."""
    from stepentropy_rl.driver.network import rendezvous

    world = int(learner.world_size)
    if world < 1:
        raise ValueError(f"cluster.learner.world_size must be >= 1, got {world}")
    own = None
    if placement is None:
        own = placement = reserve([("learner", bundle(learner.num_cpus, learner.num_gpus))] * world, start_timeout_s,
                                  "spawn_learners' start_timeout_s")
    at = [placement.options("learner", i) for i in range(world)]
    try:
        url = ray.get(rendezvous.options(**at[0]).remote())
        ranks = [LearnerWorker.options(num_cpus=learner.num_cpus, num_gpus=learner.num_gpus, **at[i],
                                       **named(f"learner-{i}"))
                 .remote(i, world, url, model_path, learner, optim) for i in range(world)]
    except BaseException:
        if own is not None:
            own.release()
        raise
    return LearnerGroup(ranks, at[0], micro_batch_size, pad_id, own)
