"""Entry point: ``python -m stepentropy_rl.main +experiment=prune_sweep``.

Builds the typed config (every key checked), then the driver resolves the model (bootstrapping the tiny reasoner if no
path is set), starts Ray and runs the registered pipeline. Works under Hydra multirun (one Ray session per job).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from stepentropy_rl.config import ConfigError, build
from stepentropy_rl.data import DataError

log = logging.getLogger("stepentropy_rl")
CPU_PRESETS = {"trainer": "cpu", "rollout": "vllm_cpu", "cluster": "local_cpu"}  # sized for the tiny reasoner
TASK_DATA = ("basket", "basket_verbose")  # the embedded task's data presets: its prompt, exact grader, reward lengths
# keys one pipeline never reads, which a user easily takes for the other's: (prefix, what to use instead)
MISPLACED = {"train": (("pruning", "pruning.* configures the static study (+experiment=prune_sweep); training prunes "
                                   "its SFT data by trainer.prune.* (e.g. trainer.prune.ratio=0.4)"),
                       ("rollout.answer_max_tokens", "it sizes the static study's answers; the prune stage's answer "
                                                     "check reads trainer.prune.answer_max_tokens"),
                       ("rollout.topk_logprobs", "it is the static study's top-k entropy check; the evaluations read "
                                                 "trainer.eval.topk_logprobs")),
             "prune_study": (("trainer.prune", "trainer.prune.* configures the training pipeline's prune stage; the "
                                               "study prunes by pruning.* (e.g. pruning.ratio=0.4,0.8)"),)}


class JobFailed(Exception):
    """A sweep job stopped by a user error: Hydra marks the job failed, runs the sweep's other jobs, and then reports
    the first failure (a ``SystemExit`` would end the whole sweep at the first bad job)."""


@hydra.main(version_base=None, config_path="pkg://stepentropy_rl.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    launch(in_sweep_group(cfg))


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def in_sweep_group(cfg: DictConfig) -> DictConfig:
    """Under a Hydra multirun, the jobs' trackers share a group: the sweep directory (unless ``trainer.logger.group``
    names one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict

    hc = HydraConfig.get() if HydraConfig.initialized() else None
    if hc is not None and hc.mode == RunMode.MULTIRUN and cfg.trainer.logger.get("group") is None:
        with open_dict(cfg):
            cfg.trainer.logger.group = str(hc.sweep.dir)
    return cfg


def override_key(override: str) -> str:
    """The dotted key of a command-line override: ``+trainer.prune.ratio=0.6`` -> ``trainer.prune.ratio``."""
    return override.lstrip("+~").split("=", 1)[0]


def resume_hint(run_dir: str, overrides: list[str], sweep_dir: str | None) -> str | None:
    """How to resume a run whose ``run_dir`` is Hydra's new timestamped directory (no ``run_dir=`` given; in a sweep,
    ``sweep_dir``, no ``hydra.sweep.dir=``): the same command would start over in another one. None when the command
    names its directory. ``overrides``: the command line's, task and Hydra ones."""
    named = {override_key(o) for o in overrides if "=" in o}
    if "run_dir" in named or (sweep_dir is not None and "hydra.sweep.dir" in named):
        return None
    if sweep_dir is not None:
        return (f"this sweep writes under a new timestamped directory, {sweep_dir}: to resume it after a crash, rerun "
                f"it with hydra.sweep.dir={sweep_dir} and the same sweep overrides in the same order")
    return f"run_dir is a new timestamped directory: to resume this run after a crash, rerun it with run_dir={run_dir}"


def misplaced(pipeline: str | None, overrides: list[str]) -> None:
    """ConfigError for a command-line key that ``pipeline`` never reads where the other pipeline has one like it
    (``pruning.ratio`` in a training sweep: every job would train at ``trainer.prune.ratio`` while ``collect``
    labels them by the ratio given)."""
    keys = [override_key(o) for o in overrides]
    for prefix, why in MISPLACED.get(pipeline, ()):
        bad = [k for k in keys if k == prefix or k.startswith(prefix + ".")]
        if bad:
            raise ConfigError(f"{', '.join(bad)} is not read by this experiment: {why}")


def claim_run_dir(run_dir: str, sweep_dir: str, overrides: list[str]) -> None:
    """A multirun job's claim on its ``run_dir`` (``.sweep_job.json``), by its command-line ``overrides`` (a rerun of
    a sweep may number its jobs otherwise): another job of the same sweep naming the same directory (``run_dir=DIR``
    under ``-m``) is refused instead of writing over the first's outputs; the same job of a rerun passes, and a job of
    another sweep takes the claim over. Under a lock: the Ray launcher starts jobs at once."""
    import fcntl

    from stepentropy_rl.files import atomic_write_json

    path = Path(run_dir) / ".sweep_job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"sweep_dir": str(Path(sweep_dir).resolve()), "overrides": sorted(overrides)}
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            theirs = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            theirs = {}
        if theirs.get("sweep_dir") == mine["sweep_dir"] and theirs.get("overrides") != mine["overrides"]:
            swept = sorted({override_key(o) for o in set(theirs.get("overrides", [])) ^ set(mine["overrides"])}
                           - {"run_dir"})  # what tells the two jobs apart
            example = "_".join(f"{k.split('.')[-1]}${{{k}}}" for k in swept) or "job"
            raise ConfigError(f"run_dir {run_dir!r} is the run directory of another job of this sweep, or of an "
                              f"earlier sweep in the same directory ({' '.join(theirs.get('overrides', []))}): under "
                              f"-m each job needs its own run_dir (leave run_dir out: each job writes to "
                              f"{sweep_dir}/job<N>; or make it differ per job, e.g. run_dir='runs/{example}')")
        atomic_write_json(path, mine)


RUN_LOG = "stepentropy_rl.run_log"  # the handler that keeps the job's log until its run directory is written


def buffer_log() -> logging.Handler:
    """Keep this job's log records until ``driver.run.log_to_run_dir`` gives them a file in the run directory (which a
    job stopped by bad input never writes), then pass each on at once."""
    from logging.handlers import MemoryHandler

    buffer = MemoryHandler(capacity=100_000, flushLevel=logging.NOTSET, flushOnClose=True)
    buffer.set_name(RUN_LOG)
    logging.getLogger().addHandler(buffer)
    return buffer


def close_log(buffer: logging.Handler, last: str | None = None) -> None:
    """Write ``last`` (the job's one-line end, printed by its exit) to the run's log only, and close it."""
    if last:
        buffer.handle(logging.makeLogRecord({"name": log.name, "levelno": logging.ERROR, "levelname": "ERROR",
                                             "msg": last}))
    target = getattr(buffer, "target", None)
    logging.getLogger().removeHandler(buffer)
    buffer.close()
    if target is not None:
        target.close()


def preset_warning(job, choices: dict) -> str | None:
    """A real checkpoint (``model.path``) run with the groups sized for the tiny reasoner on 2 CPU cores (the
    defaults): it runs, but cuts an R1 CoT at a few hundred tokens (graded wrong) and trains at the tiny model's
    learning rates; or on the embedded task's data preset (the default), whose prompt, exact grader and reward lengths
    are the tiny reasoner's. ``choices``: Hydra's chosen option per group. None when there is nothing to say."""
    if not job.model.path:
        return None
    said, t = [], job.trainer
    cpu = [f"{group}={option}" for group, option in CPU_PRESETS.items() if choices.get(group) == option]
    if cpu:
        said.append(f"{' '.join(cpu)} are the presets for the tiny reasoner on 2 CPU cores: "
                    f"rollout.max_tokens={job.rollout.max_tokens}, trainer.grpo.max_tokens={t.grpo.max_tokens}, "
                    f"trainer.eval.max_tokens={t.eval.max_tokens} (a longer CoT is cut and graded wrong), "
                    f"trainer.sft.lr={t.sft.lr:g}, trainer.grpo.lr={t.grpo.lr:g}, {job.cluster.learner.backend} "
                    f"learners. On GPUs: trainer=gpu rollout=vllm_gpu cluster=gpu_8x (conf/*/gpu*.yaml)")
    if choices.get("data") in TASK_DATA and not job.data.path:
        lengths = {k: v for k, v in job.reward.items() if k in ("length_budget", "max_length", "max_skips")}
        said.append(f"data={choices['data']} is the embedded task's preset: its basket problems, prompt "
                    f"{job.data.prompt_template!r}, the {job.data.grader} grader and reward lengths sized for the tiny "
                    f"reasoner ({', '.join(f'reward.{k}={v}' for k, v in lengths.items())}). For a real model's data: "
                    f"data=file data.path=... data.train_path=... (or data=gsm8k, math500, aime)")
    return f"model.path is a checkpoint, but {'; and '.join(said)}" if said else None


def launch(cfg: DictConfig) -> None:
    """Run the composed config; a user error (bad config value, bad data row, a dead learner) exits with one line
    naming it, or in a sweep fails only its own job (``JobFailed``)."""
    from hydra.core.hydra_config import HydraConfig

    from ray.exceptions import RayActorError

    from stepentropy_rl.driver.remote import ActorLost
    from stepentropy_rl.driver.run import pipeline_for, run
    from stepentropy_rl.driver.tracking import NonFiniteError

    buffer, last = buffer_log(), None
    try:
        job = build(cfg)  # the typed config, every key checked, before anything starts
        logging.getLogger().setLevel(job.log_level)
        pipeline_for(job)
        if HydraConfig.initialized():
            misplaced(job.pipeline, list(HydraConfig.get().overrides.task))
            if in_multirun():
                claim_run_dir(job.run_dir, str(HydraConfig.get().sweep.dir), list(HydraConfig.get().overrides.task))
        warning = preset_warning(job, dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {})
        if warning:
            log.warning(warning)
        if HydraConfig.initialized():
            hc = HydraConfig.get()
            hint = resume_hint(job.run_dir, [*hc.overrides.task, *hc.overrides.hydra],
                               str(hc.sweep.dir) if in_multirun() else None)
            if hint:
                log.info(hint)
        run(job)  # data files and context budgets are checked before any actor starts or any stage runs
    except (ConfigError, DataError, ActorLost, NonFiniteError, RayActorError) as e:
        if os.environ.get("STEPENTROPY_TRACEBACK"):
            raise
        if isinstance(getattr(e, "cause", None), Exception):  # raised in an actor: Ray's copy carries its trace
            e = e.cause
        kind = next((k for cls, k in ((ConfigError, "config error"), (DataError, "data error")) if isinstance(e, cls)),
                    "run stopped")
        what = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, RayActorError):  # an actor whose restarts (cluster.*.max_restarts) were used up
            what = f"an actor died and was not restarted: {what}; rerun the same command to resume"
        message = f"{kind}: {what} (STEPENTROPY_TRACEBACK=1 shows where)"
        if in_multirun():
            log.error("%s; the sweep goes on with its other jobs", message)
            raise JobFailed(message) from None
        last = message
        raise SystemExit(message) from None
    except Exception:
        if in_multirun():  # Hydra keeps a failed job's exception without a word and raises only the first job's
            log.exception("the job failed; the sweep goes on with its other jobs")
        raise
    finally:
        close_log(buffer, last)


if __name__ == "__main__":
    main()
