"""Ray start-up and actor placement, from ``conf/cluster``."""
from __future__ import annotations

import logging
import os

import ray

from workers.reference import ReferenceWorker
from workers.reward import RewardWorker
from workers.rollout import RolloutWorker

log = logging.getLogger(__name__)


def init_ray(cluster) -> None:
    """Join ``cluster.address`` (or RAY_ADDRESS) if set, else start a local Ray with the dashboard on 127.0.0.1."""
    if ray.is_initialized():
        return
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    # Workers import the project from the driver's working tree.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [_project_root(), os.environ.get("PYTHONPATH")])),
                        "TOKENIZERS_PARALLELISM": "false"}}
    if address:
        ctx = ray.init(address=address, runtime_env=env, log_to_driver=True)
    else:
        ctx = ray.init(num_cpus=cluster.num_cpus, include_dashboard=cluster.include_dashboard,
                       dashboard_host=cluster.dashboard_host, runtime_env=env, log_to_driver=True)
    url = getattr(ctx, "dashboard_url", None)
    log.info("Ray dashboard: %s", f"http://{url}" if url else "(off)")


def _project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn_rollout(cfg, model_path: str):
    c = cfg.cluster.rollout
    # No automatic task retries: a restarted engine serves the initial weights, so the driver re-pushes the
    # current ones before retrying (grpo.generate_with_recovery).
    return RolloutWorker.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus, max_restarts=c.max_restarts,
                                 max_task_retries=0).remote(
        model_path, dict(cfg.rollout.engine), cfg.rollout.seed, cfg.rollout.kv_cache_gib)


def spawn_reference(cfg, model_path: str):
    c = cfg.cluster.reference
    return ReferenceWorker.options(num_cpus=c.num_cpus, num_gpus=c.num_gpus).remote(
        model_path, cfg.reference.dtype, c.threads)


def spawn_reward(cfg, skip_id: int):
    from omegaconf import OmegaConf

    return RewardWorker.options(num_cpus=cfg.cluster.reward.num_cpus).remote(
        OmegaConf.to_container(cfg.reward, resolve=True), cfg.data.grader, skip_id, cfg.trainer.prune.delimiter)
