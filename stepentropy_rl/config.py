"""Config validation: every impossible value fails before any actor starts, with the key that holds it."""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from stepentropy_rl.cot_format import GRADE_SPANS
from stepentropy_rl.pruning import validate_pruning
from stepentropy_rl.tasks.basket import BasketConfig
from stepentropy_rl.tasks.grading import get_grader

PIPELINES = ("prune_study", "train")
KL_REFERENCES = ("sft", "base")


def shipped_data_dir() -> str:
    """The directory of the data files the project ships (``data/`` of the checkout, installed as the package
    ``stepentropy_rl.shipped_data``); ``${shipped_data:}`` in a config."""
    import importlib.util

    spec = importlib.util.find_spec("stepentropy_rl.shipped_data")
    if spec is not None and spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    return str(Path(__file__).resolve().parents[1] / "data")  # a checkout on PYTHONPATH, not installed


if not OmegaConf.has_resolver("shipped_data"):
    OmegaConf.register_new_resolver("shipped_data", shipped_data_dir)


class ConfigError(ValueError):
    """A config value that cannot work."""


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def as_list(x) -> list:
    """A config value that may be one item or a list of them, as a list."""
    return list(x) if isinstance(x, (list, tuple, ListConfig)) else [x]


def task_config(cfg: DictConfig) -> BasketConfig:
    raw = OmegaConf.to_container(cfg.data.task, resolve=True)
    raw["ops"] = tuple(raw.get("ops", ("add",)))
    try:
        task = BasketConfig(**raw)
    except TypeError as e:
        raise ConfigError(f"data.task: {e}") from None
    try:
        task.validate()
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    return task


def validate(cfg: DictConfig, check_paths: bool = True) -> None:
    """Raise ConfigError naming the first impossible key. ``check_paths=False`` checks a config for another
    machine (model and data files need not exist here)."""
    _need(cfg.pipeline in PIPELINES,
          f"pipeline must be one of {PIPELINES} (choose one with +experiment=prune_sweep), got {cfg.pipeline!r}")
    if cfg.model.path is not None:
        _need(not check_paths or Path(cfg.model.path).expanduser().is_dir(),
              f"model.path: no such model directory {cfg.model.path!r}")
    else:
        _need(cfg.model.get("tiny") is not None or cfg.model.get("standin") is not None,
              "model.tiny or model.standin must be set when model.path is null")
    if cfg.data.path is not None:
        _need(not check_paths or Path(cfg.data.path).expanduser().is_file(), f"data.path: no such file {cfg.data.path!r}")
    if cfg.pipeline == "train" and cfg.data.get("train_path") is not None:
        _need(not check_paths or Path(cfg.data.train_path).expanduser().is_file(),
              f"data.train_path: no such file {cfg.data.train_path!r}")
    else:
        task_config(cfg)
    try:
        get_grader(cfg.data.grader)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _need(cfg.data.get("grade_span", "answer") in GRADE_SPANS,
          f"data.grade_span must be one of {GRADE_SPANS}, got {cfg.data.get('grade_span')!r}")
    _need(int(cfg.data.n_eval) >= 1, f"data.n_eval must be >= 1, got {cfg.data.n_eval}")
    for strategy in as_list(cfg.pruning.strategy):
        for ratio in as_list(cfg.pruning.ratio):
            try:
                validate_pruning(strategy, ratio)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    _need(cfg.pruning.aggregate in ("sum", "mean"),
          f"pruning.aggregate must be 'sum' or 'mean', got {cfg.pruning.aggregate!r}")
    _need(bool(cfg.pruning.delimiter), "pruning.delimiter must be a non-empty string")
    r = cfg.rollout
    for key in ("temperature", "answer_temperature"):
        v = float(r[key])
        _need(math.isfinite(v) and v >= 0, f"rollout.{key} must be >= 0, got {r[key]}")
    _need(0 < float(r.top_p) <= 1, f"rollout.top_p must be in (0, 1], got {r.top_p}")
    for key in ("max_tokens", "answer_max_tokens"):
        _need(int(r[key]) >= 1, f"rollout.{key} must be >= 1, got {r[key]}")
    _need(int(cfg.cluster.rollout.num_workers) >= 1,
          f"cluster.rollout.num_workers must be >= 1, got {cfg.cluster.rollout.num_workers}")
    if cfg.pipeline == "train":
        validate_training(cfg)
    check_context(cfg, longest_prompt=1)


def context_needs(cfg: DictConfig) -> dict[str, int]:
    """Tokens each generation needs beyond its prompt, by the config key that sets them. Pruned-thinking answer
    regeneration continues a CoT of up to ``rollout.max_tokens``."""
    r = cfg.rollout
    if cfg.pipeline == "prune_study":
        return {"rollout.max_tokens + rollout.answer_max_tokens": int(r.max_tokens) + int(r.answer_max_tokens)}
    t = cfg.trainer
    return {"rollout.max_tokens + trainer.prune.answer_max_tokens": int(r.max_tokens) + int(t.prune.answer_max_tokens),
            "trainer.grpo.max_tokens": int(t.grpo.max_tokens), "trainer.eval.max_tokens": int(t.eval.max_tokens)}


def check_context(cfg: DictConfig, longest_prompt: int, max_model_len: int | None = None) -> None:
    """ConfigError unless the longest prompt plus each generation budget fits the engine's context
    (``rollout.engine.max_model_len``, else ``max_model_len``, e.g. the model's ``max_position_embeddings``):
    vLLM would cut the response short without an error."""
    limit = cfg.rollout.engine.get("max_model_len") or max_model_len
    if not limit:
        return
    for key, need in context_needs(cfg).items():
        _need(longest_prompt + need <= int(limit),
              f"{key} = {need} plus the longest prompt ({longest_prompt} tokens) exceeds the engine's context "
              f"rollout.engine.max_model_len = {limit}: raise max_model_len or lower the budget")


def validate_training(cfg: DictConfig) -> None:
    from stepentropy_rl.algorithms import known_estimators
    from stepentropy_rl.phase import STAGES, PhaseConfig
    from stepentropy_rl.rewards import stage_rewards

    a, t = cfg.algorithm, cfg.trainer
    for stage in STAGES:
        _need(stage in a.adv_estimator and a.adv_estimator[stage] in known_estimators(),
              f"algorithm.adv_estimator.{stage} must be one of {known_estimators()}, got "
              f"{a.adv_estimator.get(stage)!r}")
        _need(stage in a.temperature and 0 < float(a.temperature[stage]) <= 5,
              f"algorithm.temperature.{stage} must be in (0, 5] (log-probs are taken at the sampling temperature)")
    _need(int(a.n_samples) >= 2, f"algorithm.n_samples must be >= 2 (a GRPO group), got {a.n_samples}")
    _need(int(a.prompts_per_step) >= 1, f"algorithm.prompts_per_step must be >= 1, got {a.prompts_per_step}")
    _need(a.prompts_per_step * a.n_samples >= cfg.cluster.learner.world_size,
          "algorithm.prompts_per_step * n_samples must be >= cluster.learner.world_size")
    _need(float(a.kl_coef) >= 0, f"algorithm.kl_coef must be >= 0, got {a.kl_coef}")
    mini = a.get("ppo_mini_batch_size") or a.prompts_per_step
    _need(int(mini) >= 1 and a.prompts_per_step % int(mini) == 0,
          f"algorithm.ppo_mini_batch_size must divide algorithm.prompts_per_step ({a.prompts_per_step}), got {mini}")
    _need(int(mini) * a.n_samples >= cfg.cluster.learner.world_size,
          "algorithm.ppo_mini_batch_size * n_samples must be >= cluster.learner.world_size")
    _need(int(a.get("ppo_epochs", 1)) >= 1, f"algorithm.ppo_epochs must be >= 1, got {a.get('ppo_epochs')}")
    _need(a.get("kl_reference", "sft") in KL_REFERENCES,
          f"algorithm.kl_reference must be one of {KL_REFERENCES}, got {a.get('kl_reference')!r}")
    for check, where in ((lambda: PhaseConfig(**dict(a.phase)).validate(), "algorithm.phase"),
                         (lambda: stage_rewards(OmegaConf.to_container(cfg.reward, resolve=True)), "reward"),
                         (lambda: validate_pruning("low", t.prune.ratio), "trainer.prune")):
        try:
            check()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}") from None
    for key in ("steps", "save_every", "max_tokens"):
        _need(int(t.grpo[key]) >= 1, f"trainer.grpo.{key} must be >= 1, got {t.grpo[key]}")
    _need(int(t.n_train) >= 1, f"trainer.n_train must be >= 1, got {t.n_train}")
    _need(int(cfg.cluster.learner.world_size) >= 1,
          f"cluster.learner.world_size must be >= 1, got {cfg.cluster.learner.world_size}")
    _need(cfg.cluster.learner.backend in ("gloo", "nccl"),
          f"cluster.learner.backend must be gloo or nccl, got {cfg.cluster.learner.backend!r}")
    _need(float(cfg.cluster.learner.get("sync_bucket_mb", 256)) > 0,
          f"cluster.learner.sync_bucket_mb must be > 0, got {cfg.cluster.learner.get('sync_bucket_mb')}")
    dtypes = ("float32", "bfloat16", "float16")
    _need(cfg.cluster.learner.dtype in dtypes,
          f"cluster.learner.dtype must be one of {dtypes}, got {cfg.cluster.learner.dtype!r}")
    _need(cfg.cluster.learner.get("param_dtype") in (None, *dtypes),
          f"cluster.learner.param_dtype must be null or one of {dtypes}, got {cfg.cluster.learner.get('param_dtype')!r}")
