"""The typed config: one dataclass per config group (``conf/<group>/*.yaml``), checked in ``__post_init__``.

``build(cfg)`` turns the composed Hydra config into a :class:`JobConfig` once, at start-up, before any stage runs:
unknown keys, wrong types and impossible values fail there with the dotted key that holds them. Everything after
start-up takes its typed sub-config (``cfg.trainer.grpo``, ``cfg.cluster.learner``, ...).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf

from stepentropy_rl.cot_format import GRADE_SPANS, SKIP_TOKEN
from stepentropy_rl.phase import STAGES, PhaseConfig, stages_reached
from stepentropy_rl.pruning import validate_pruning
from stepentropy_rl.r1_standin import StandinConfig
from stepentropy_rl.tasks.basket import BasketConfig
from stepentropy_rl.tiny_config import RECIPES, TinyConfig, fast_bf16
from stepentropy_rl.typed import ConfigError, from_dict, need, one_of, positive

DTYPES = ("float32", "bfloat16", "float16")
# the head sizes vLLM's CPU attention runs (vllm/v1/attention/backends/cpu_attn.py, get_supported_head_sizes; 0.31):
# another one fails at the engine's start ("Unsupported CPU attention configuration: head_dim=16"), after a bootstrap
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
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


def as_list(x) -> list:
    """A config value that may be one item or a list of them, as a list."""
    return list(x) if isinstance(x, (list, tuple)) else [x]


# ---- model, data, generation -------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """``model.path`` (a HF checkpoint directory) if set; else the R1-format stand-in (``standin``) or the tiny
    reasoner (``tiny``), built and cached on first use."""

    path: Optional[str] = None
    dtype: str = "float32"  # the reference model's
    tiny: Optional[TinyConfig] = None  # its task is data.task (resolve_model sets it)
    standin: Optional[StandinConfig] = None

    def __post_init__(self):
        one_of(self, "dtype", DTYPES)
        need(self.path is None or bool(str(self.path).strip()), "path",
             "is empty (an unset shell variable?): give a checkpoint directory, or null")
        need(self.path is not None or self.tiny is not None or self.standin is not None, "tiny",
             "or model.standin must be set when model.path is null")

    def tiny_that_runs(self) -> Optional[TinyConfig]:
        """``tiny`` where it is the model that runs: ``path``, then ``standin``, win over it (``resolve_model``)."""
        return self.tiny if not self.path and self.standin is None else None


# where and how a run is logged, resources, restarts, caches and fault injection: no output of any pipeline depends on
# them (a sweep's jobs log to the sweep's wandb group, a job rerun alone to none; collect, run.prepare)
RUN_ONLY = (
    "run_dir", "log_level", "trainer.logger", "trainer.progress", "rollout.log_level", "pruning.cache",
    "cluster.address", "cluster.dashboard_host", "cluster.include_dashboard", "cluster.loopback_only",
    "cluster.num_cpus", "cluster.reward", "cluster.rollout.max_restarts", "cluster.reference.max_restarts",
    "cluster.rollout.num_cpus", "cluster.reference.num_cpus", "cluster.learner.num_cpus",
    "cluster.learner.sync_timeout_s", "cluster.learner.pg_timeout_s", "cluster.start_timeout_s",
    "cluster.learner.start_timeout_s",  # cluster.start_timeout_s's name until 2026-12-06
    "cluster.learner.sync_bucket_mb",  # how a weight push is cut up, not what it sends
    "data.grade_workers", "trainer.eval.cache", "trainer.prune.cache",
    "trainer.grpo.crash_after_step", "trainer.grpo.kill_at_step", "trainer.grpo.keep_last", "trainer.grpo.save_every",
)

# DeepSeek-R1's usage recommendation for math: the directive in the user message, no system prompt
R1_INSTRUCTION = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{}."
REWARD_SCALE_KEYS = ("length_budget", "max_length", "max_skips")  # conf/reward/*.yaml: data.reward_scale.KEY


@dataclass
class DataConfig:
    path: Optional[str] = None  # held-out problems (.jsonl/.json/.parquet/dataset dir); null = generated from ``task``
    train_path: Optional[str] = None  # training problems, the same kinds; null = generated from ``task``
    prompt_key: str = "prompt"  # a string or chat messages (verl)
    answer_key: Optional[str] = None  # dotted for nested fields; null = "answer", else verl's reward_model.ground_truth
    prompt_template: str = R1_INSTRUCTION  # the user message; {prompt} is the question
    system_prompt: Optional[str] = None  # a system message for every prompt (a row's own comes first)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # to apply_chat_template, e.g. enable_thinking
    grader: str = "exact"
    grade_span: str = "answer"
    seed: int = 0  # generated tasks only: a file's problems are read in order
    n_eval: int = 200  # held-out problems: the first n_eval of data.path, or n_eval generated
    overlong: str = "error"  # a prompt too long for the engine's context: error (naming the row) | skip (counted)
    grade_timeout_s: float = 5.0  # math grader: math-verify's budget per sample, in a worker process
    grade_workers: int = 2  # math grader: worker processes per grading process (driver, reward service)
    task: Optional[BasketConfig] = None
    # the GRPO rewards' lengths at the task's scale (conf/reward/*.yaml read them); {}: the papers' constants
    reward_scale: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        from stepentropy_rl.hooks import split_spec

        for key in ("path", "train_path"):  # '' reads as the current folder, and as "not set" further on
            need(getattr(self, key) is None or bool(str(getattr(self, key)).strip()), key,
                 "is empty (an unset shell variable?): give a file or dataset folder, or null for generated problems")
        from stepentropy_rl.tasks.grading import GRADERS, get_grader

        spec = split_spec(self.grader)
        if spec:  # a user's grader: by absolute path, since the reward actor may run elsewhere; loaded once to check
            self.grader = f"{Path(spec[0]).expanduser().resolve()}:{spec[1]}"
            try:
                get_grader(self.grader)
            except ValueError as e:
                raise ConfigError(str(e).removeprefix("data.")) from None  # from_dict puts "data." back
        else:
            need(self.grader in GRADERS, "grader", f"must be one of {tuple(GRADERS)} or path/to/file.py:function, "
                 f"got {self.grader!r}")
        one_of(self, "overlong", ("error", "skip"))
        need("{prompt}" in self.prompt_template, "prompt_template", "must contain {prompt}, where the question goes")
        need(self.chat_template_kwargs.get("enable_thinking", True) is not False, "chat_template_kwargs.enable_thinking",
             "is false: the model would not think (Qwen3's template closes an empty thinking in the prompt), so there "
             "is nothing to compress and no </think> in a response before its answer, which is graded wrong")
        one_of(self, "grade_span", GRADE_SPANS)
        positive(self, "n_eval", "grade_workers", integer=True)
        positive(self, "grade_timeout_s")
        for key, value in self.reward_scale.items():
            need(key in REWARD_SCALE_KEYS, "reward_scale", f"has unknown key {key!r} (known: {REWARD_SCALE_KEYS})")
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0, "reward_scale",
                 f".{key} must be a positive integer, got {value!r}")


@dataclass
class RolloutConfig:
    """vLLM sampling for the study and the prune stage; ``engine``: extra ``vllm.LLM`` keyword arguments."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 384
    answer_temperature: float = 0.6
    answer_max_tokens: int = 32
    seed: int = 0
    topk_logprobs: int = 20
    kv_cache_gib: int = 1
    log_level: str = "WARNING"  # vLLM's own logging in the engines (VLLM_LOGGING_LEVEL): INFO prints every request
    engine: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        positive(self, "temperature", "answer_temperature", "kv_cache_gib", allow_zero=True)
        positive(self, "topk_logprobs", integer=True, allow_zero=True)
        one_of(self, "log_level", ("DEBUG", "INFO", "WARNING", "ERROR"))
        positive(self, "max_tokens", "answer_max_tokens", integer=True)
        need(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        limit = self.engine.get("max_model_len")
        need(limit is None or (isinstance(limit, int) and limit >= 1), "engine.max_model_len",
             f"must be null or an integer >= 1, got {limit!r}")
        for key in ("tensor_parallel_size", "pipeline_parallel_size"):
            # the weight sync gives each engine one rank in its group and each engine actor one GPU: every worker
            # of a parallel engine would join under the same rank
            need(self.engine.get(key, 1) == 1, f"engine.{key}",
                 f"must be 1 (one GPU per engine; scale with cluster.rollout.num_workers), "
                 f"got {self.engine.get(key)!r}")


@dataclass
class StepPruning:
    """How steps are cut, scored and replaced: shared by the study (``pruning``) and the prune stage."""

    placeholder: str = "[SKIP]"  # any text; "" deletes the step
    aggregate: str = "sum"  # step entropy: sum or mean of its token entropies
    delimiter: str = "\n\n"
    protect_first: bool = False
    protect_last: bool = False
    merge_runs: bool = False  # one placeholder per run of consecutive pruned steps (paper 1: one per step)
    cache: bool = True  # reuse the scored CoTs of an earlier run with the same model, problems and sampling

    def __post_init__(self):
        one_of(self, "aggregate", ("sum", "mean"))
        need(bool(self.delimiter), "delimiter", "must be a non-empty string")


@dataclass
class PruningConfig(StepPruning):
    """The static study's pruning; ``strategy`` and ``ratio`` may be one value or a list (a sweep)."""

    strategy: Any = "low"
    ratio: Any = 0.8
    seed: int = 0  # for strategy=random

    def __post_init__(self):
        super().__post_init__()
        for key in ("strategy", "ratio"):
            need(as_list(getattr(self, key)) != [], key, "must be a value or a non-empty list")
        for strategy in as_list(self.strategy):
            for ratio in as_list(self.ratio):
                try:
                    validate_pruning(strategy, ratio)
                except ValueError as e:
                    raise ConfigError(str(e).removeprefix("pruning.")) from None
        for key, same in (("strategy", str), ("ratio", float)):  # a repeat would count each problem twice in a cell
            values = [same(v) for v in as_list(getattr(self, key))]
            need(len(set(values)) == len(values), key, f"lists a value twice: {as_list(getattr(self, key))}")


@dataclass
class ReferenceConfig:
    dtype: str = "float32"
    batch_size: int = 16
    chunk_rows: int = 2048  # rows of logits per entropy chunk: bounds memory with a 151k vocabulary

    def __post_init__(self):
        one_of(self, "dtype", DTYPES)
        positive(self, "batch_size", "chunk_rows", integer=True)


# ---- cluster -----------------------------------------------------------------------------------------------------
def thread_count(obj) -> None:
    """``obj.threads`` is an integer >= -1: the actor's OpenMP/torch threads; 0 leaves Ray's default (one per whole
    CPU the actor reserves, at least 1: a single thread for a fractional one), -1 every core of the machine."""
    v = obj.threads
    need(isinstance(v, int) and not isinstance(v, bool) and v >= -1, "threads",
         f"must be an integer >= -1 (-1 every core, 0 Ray's default), got {v!r}")


@dataclass
class RolloutCluster:
    num_workers: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0
    threads: int = 0  # OMP_NUM_THREADS of each engine (thread_count)
    max_restarts: int = 2

    def __post_init__(self):
        positive(self, "num_workers", integer=True)
        positive(self, "num_cpus", "num_gpus", allow_zero=True)
        positive(self, "max_restarts", allow_zero=True, integer=True)
        thread_count(self)


@dataclass
class ReferenceCluster:
    num_cpus: float = 0.25
    num_gpus: float = 0
    threads: int = 0  # thread_count
    max_restarts: int = 2  # a dead reference is restarted by Ray (it reloads its model) and the call retried

    def __post_init__(self):
        positive(self, "num_cpus", "num_gpus", allow_zero=True)
        positive(self, "max_restarts", allow_zero=True, integer=True)
        thread_count(self)


@dataclass
class RewardCluster:
    num_cpus: float = 0.1
    max_restarts: int = 2  # a dead reward service is restarted by Ray and the call retried (it keeps no state)

    def __post_init__(self):
        positive(self, "num_cpus", allow_zero=True)
        positive(self, "max_restarts", allow_zero=True, integer=True)


@dataclass
class LearnerCluster:
    """FSDP2 learner ranks: ``dtype`` of parameters and optimizer state, ``param_dtype`` the mixed-precision compute
    dtype (null = ``dtype``); weight pushes stream ``sync_bucket_mb`` buckets over ``backend``, a member that does
    not answer within ``sync_timeout_s`` failing the push; ``pg_timeout_s`` is their process group's (rank 0 loads
    and saves the full model while the others wait in a collective);
    ``gradient_checkpointing`` recomputes each decoder layer's activations in the backward pass; ``autocast_bf16``
    runs the ranks' forward passes under bf16 autocast over ``dtype`` weights (null: on for fp32 CPU ranks where
    the driver's CPU computes bf16 fast, ``tiny_config.fast_bf16``; GPU ranks compute in ``param_dtype``)."""

    world_size: int = 2
    num_cpus: float = 0.5
    num_gpus: float = 0
    backend: str = "gloo"
    dtype: str = "float32"
    param_dtype: Optional[str] = None
    threads: int = 1
    sync_bucket_mb: float = 64
    sync_timeout_s: float = 600.0
    pg_timeout_s: float = 1800.0
    gradient_checkpointing: bool = False
    autocast_bf16: Optional[bool] = None

    def __post_init__(self):
        if self.autocast_bf16 is None:  # resolved here, so that the run's saved config says what the ranks did
            self.autocast_bf16 = (self.backend == "gloo" and self.dtype == "float32" and self.param_dtype is None
                                  and fast_bf16())
        positive(self, "world_size", integer=True)
        positive(self, "num_cpus", "num_gpus", allow_zero=True)
        positive(self, "threads", allow_zero=True, integer=True)
        positive(self, "sync_bucket_mb", "sync_timeout_s", "pg_timeout_s")
        need(self.num_cpus > 0 or self.num_gpus > 0, "num_cpus",
             "must be > 0 where num_gpus is 0: each rank reserves a bundle of the job's placement group, and rank 0's "
             "holds the rendezvous of its process group")
        one_of(self, "backend", ("gloo", "nccl"))
        one_of(self, "dtype", DTYPES)
        one_of(self, "param_dtype", (None, *DTYPES))
        # a rank's device follows its backend (workers/learner.py): gloo on GPUs would train on the CPU while
        # holding them, nccl without a GPU fails at its first collective
        need((self.backend == "nccl") == (self.num_gpus > 0), "backend",
             f"must be nccl with GPUs (num_gpus > 0) and gloo without, got {self.backend} with num_gpus="
             f"{self.num_gpus:g}")
        need(not (self.autocast_bf16 and self.param_dtype), "autocast_bf16",
             f"and param_dtype ({self.param_dtype}) are two ways to compute in low precision: set one")
        need(self.num_gpus == 0 or self.num_gpus >= 1, "num_gpus",
             f"must be 0 or at least 1: NCCL refuses two ranks on one GPU, got {self.num_gpus:g}")
        for key in ("dtype", "param_dtype"):
            need(getattr(self, key) != "float16", key, "float16 needs a loss scaler, which the learners do not run "
                                                       "(small gradients would underflow to 0 silently): use bfloat16")


@dataclass
class ClusterConfig:
    address: Optional[str] = None  # a Ray cluster to join (or RAY_ADDRESS); null = start one here
    num_cpus: Optional[int] = None
    dashboard_host: str = "127.0.0.1"
    include_dashboard: bool = True
    loopback_only: bool = True  # a Ray started here listens on loopback only (driver.network)
    start_timeout_s: float = 600.0  # how long a job waits for its actors' resources (driver.placement), then an error
    rollout: RolloutCluster = field(default_factory=RolloutCluster)
    reference: ReferenceCluster = field(default_factory=ReferenceCluster)
    reward: RewardCluster = field(default_factory=RewardCluster)
    learner: LearnerCluster = field(default_factory=LearnerCluster)

    def __post_init__(self):
        need(self.num_cpus is None or (isinstance(self.num_cpus, int) and self.num_cpus >= 1), "num_cpus",
             f"must be null (every core) or an integer >= 1, got {self.num_cpus!r}")
        positive(self, "start_timeout_s")


# ---- training ----------------------------------------------------------------------------------------------------
@dataclass
class AlgorithmConfig:
    """GRPO; sizes are global and counted in prompts; ``temperature``, ``adv_estimator`` and ``norm_adv_by_std``
    per phase stage (``norm_adv_by_std`` also takes one bool for both)."""

    prompts_per_step: int = 16
    n_samples: int = 4
    ppo_mini_batch_size: Optional[int] = None  # null = prompts_per_step: one optimizer step per rollout batch
    ppo_epochs: int = 1
    top_p: float = 1.0
    temperature: dict[str, float] = field(default_factory=lambda: {"compress": 0.6, "explore": 0.8})
    adv_estimator: dict[str, str] = field(default_factory=lambda: {"compress": "grpo", "explore": "grpo"})
    norm_adv_by_std: Union[bool, dict[str, Any]] = field(  # false = Dr.GRPO; one bool is both stages'
        default_factory=lambda: {"compress": True, "explore": True})
    beta: float = 1.0
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: Optional[float] = None
    kl_coef: float = 0.001
    kl_type: str = "low_var_kl"
    kl_reference: str = "sft"
    phase: PhaseConfig = field(default_factory=PhaseConfig)

    def __post_init__(self):
        from stepentropy_rl.verl_names import ADV_ESTIMATORS, KL_TYPES, LOSS_AGG_MODES, NEEDS_MORE, is_estimator

        positive(self, "prompts_per_step", "ppo_epochs", integer=True)
        need(self.n_samples >= 2, "n_samples", f"must be >= 2 (a GRPO group), got {self.n_samples}")
        if self.ppo_mini_batch_size is None:
            self.ppo_mini_batch_size = self.prompts_per_step
        need(self.ppo_mini_batch_size >= 1 and self.prompts_per_step % self.ppo_mini_batch_size == 0,
             "ppo_mini_batch_size", f"must divide algorithm.prompts_per_step ({self.prompts_per_step}), "
                                    f"got {self.ppo_mini_batch_size}")
        need(self.top_p == 1, "top_p", f"must be 1, got {self.top_p}: the learners and the reference score "
                                       f"log-probs and entropies under the whole softmax(logits / T), so samples from "
                                       f"a top-p cut would be scored under a distribution that did not draw them "
                                       f"(verl's rollout.top_p < 1 does so silently); rollout.top_p is the "
                                       f"evaluation's and the pruning CoTs'")
        if isinstance(self.norm_adv_by_std, bool):
            self.norm_adv_by_std = {stage: self.norm_adv_by_std for stage in STAGES}
        for key in ("temperature", "adv_estimator", "norm_adv_by_std"):
            extra = sorted(set(getattr(self, key)) - set(STAGES))
            need(not extra, key, f"has no stage {', '.join(map(repr, extra))}; the stages are {list(STAGES)}")
        for stage in STAGES:
            need(isinstance(self.norm_adv_by_std.get(stage), bool), f"norm_adv_by_std.{stage}",
                 f"must be true or false, got {self.norm_adv_by_std.get(stage)!r}")
            t = self.temperature.get(stage)
            need(t is not None and math.isfinite(t) and 0 < t <= 5, f"temperature.{stage}",
                 f"must be in (0, 5] (log-probs are taken at the sampling temperature), got {t}")
            name = self.adv_estimator.get(stage)
            need(is_estimator(name), f"adv_estimator.{stage}", f"must be one of {list(ADV_ESTIMATORS)}, got {name!r}")
            need(name not in NEEDS_MORE, f"adv_estimator.{stage}",
                 f"{name!r} needs {NEEDS_MORE.get(name)}, which this trainer does not provide")
        positive(self, "beta", "clip_ratio_low", "clip_ratio_high")
        need(self.clip_ratio_low < 1, "clip_ratio_low", f"must be < 1, got {self.clip_ratio_low}: the ratio's lower "
             f"clip bound, 1 - clip_ratio_low, would be at or below 0, which turns it off")
        need(self.clip_ratio_c > 1, "clip_ratio_c", f"must be > 1 (dual clip), got {self.clip_ratio_c}")
        positive(self, "kl_coef", allow_zero=True)
        if self.loss_scale_factor is not None:
            positive(self, "loss_scale_factor")
        one_of(self, "loss_agg_mode", LOSS_AGG_MODES)
        one_of(self, "kl_type", KL_TYPES)
        one_of(self, "kl_reference", KL_REFERENCES)


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: tuple[float, ...] = (0.9, 0.99)
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self):
        positive(self, "lr", "grad_clip")
        positive(self, "weight_decay", allow_zero=True)
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
             f"must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class PruneStageConfig(StepPruning):
    """The prune stage that makes the SFT data: whose CoTs (``source``: policy | gold), pruned at ``ratio``."""

    source: str = "policy"
    ratio: float = 0.8
    merge_runs: bool = True  # one [SKIP] per run of pruned steps
    keep_verified: bool = True  # keep a pruned CoT only if the answer regenerated after it is still right
    verify_with: str = "deletion"  # what the check reads: the pruned steps deleted | the SFT row's placeholder
    # also drop a pruned CoT that lost a labelled essential step: true | false | null (where the data has labels)
    keep_essential: Optional[bool] = None
    answer_max_tokens: int = 32

    def __post_init__(self):
        super().__post_init__()
        one_of(self, "source", ("policy", "gold"))
        one_of(self, "verify_with", ("deletion", "placeholder"))
        need(self.placeholder in ("", SKIP_TOKEN), "placeholder",
             f"must be {SKIP_TOKEN!r} (the token the training adds, which the skip rewards and the evaluation count) "
             f"or '' (the pruned steps deleted), got {self.placeholder!r}")
        try:
            validate_pruning("low", self.ratio)
        except ValueError as e:
            raise ConfigError(f"ratio {str(e).removeprefix('pruning.ratio ')}") from None
        positive(self, "answer_max_tokens", integer=True)


@dataclass
class SFTConfig:
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    min_steps: int = 80  # at least this many optimizer steps, however few rows the prune stage kept (0: epochs decide)

    def __post_init__(self):
        positive(self, "epochs", "batch_size", integer=True)
        positive(self, "lr")
        positive(self, "min_steps", allow_zero=True, integer=True)


@dataclass
class GRPOConfig:
    steps: int = 40
    max_tokens: int = 320
    lr: float = 3e-5
    optimizer: str = "continue"  # continue: SFT's AdamW moments carry on | fresh: zeroed at GRPO's start (verl, TRL)
    save_every: int = 1  # a killed run redoes the steps after its last checkpoint
    keep_last: int = 2  # GRPO checkpoints kept on disk
    crash_after_step: Optional[int] = None  # fault injection (driver/faults.py): exit after this step
    kill_at_step: dict[str, int] = field(default_factory=dict)  # fault injection: {role: step} (driver/faults.py)

    def __post_init__(self):
        positive(self, "steps", "max_tokens", "save_every", "keep_last", integer=True)
        positive(self, "lr")
        one_of(self, "optimizer", ("continue", "fresh"))
        roles = ("rollout", "reference", "reward", "learner")
        need(set(self.kill_at_step) <= set(roles), "kill_at_step", f"roles must be among {list(roles)}")


@dataclass
class EvalConfig:
    temperature: float = 0.6
    max_tokens: int = 384
    topk_logprobs: int = 20  # per token, for the saved CoTs' entropies (eval/<model>.cots.jsonl); 0: none
    cache: bool = True  # reuse the base's evaluated CoTs of an earlier job with the same base, problems, sampling and
    # engine state (cot_cache; the SFT and final models are new in each job)

    def __post_init__(self):
        positive(self, "temperature", allow_zero=True)
        positive(self, "max_tokens", integer=True)
        positive(self, "topk_logprobs", integer=True, allow_zero=True)


@dataclass
class LoggerConfig:
    wandb: str = "offline"  # offline | online | disabled
    project: str = "stepentropy_rl"
    group: Optional[str] = None  # wandb group; null = the sweep directory under a Hydra multirun
    tensorboard: bool = False  # also write TensorBoard event files under run_dir/tensorboard

    def __post_init__(self):
        one_of(self, "wandb", ("offline", "online", "disabled"))


@dataclass
class TrainerConfig:
    n_train: int = 2048
    optim: OptimConfig = field(default_factory=OptimConfig)
    prune: PruneStageConfig = field(default_factory=PruneStageConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    micro_batch_size: int = 16  # per learner rank
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    progress: Any = "auto"  # progress bars with ETA: auto (when stderr is a terminal) | true | false

    def __post_init__(self):
        positive(self, "n_train", "micro_batch_size", integer=True)
        one_of(self, "progress", ("auto", True, False))


# ---- the job -----------------------------------------------------------------------------------------------------
@dataclass
class JobConfig:
    """The whole run. ``reward`` stays a mapping (term lists per stage, checked by ``rewards.stage_rewards``)."""

    pipeline: Optional[str]  # a registered pipeline (driver.run.pipeline_for checks it); set by +experiment=NAME
    run_dir: str
    model: ModelConfig
    data: DataConfig
    rollout: RolloutConfig
    pruning: PruningConfig
    cluster: ClusterConfig
    reward: dict[str, Any]
    algorithm: AlgorithmConfig
    trainer: TrainerConfig
    reference: ReferenceConfig
    seed: int = 0
    log_level: str = "INFO"

    def __post_init__(self):
        from stepentropy_rl.rewards import stage_rewards

        one_of(self, "log_level", ("DEBUG", "INFO", "WARNING", "ERROR"))
        train = self.pipeline == "train"
        need(self.data.task is not None or self.model.tiny_that_runs() is None, "model",
             "is the tiny reasoner, which knows only the embedded task (data=basket); with other data choose a "
             "model, e.g. model=r1_distill_qwen_7b model.path=/path/to/checkpoint")
        tiny_checkpoint = bool(self.model.path) and Path(self.model.path, "bootstrap.json").is_file()
        need(self.data.task is None or not (self.data.path or self.data.train_path)
             or self.model.tiny_that_runs() is not None or tiny_checkpoint, "data.path",
             "with a generated-task data preset (data=basket_verbose, the default) keeps that task's settings, made "
             "for the tiny reasoner: the bare question as prompt, the exact grader, GRPO reward lengths of about 100 "
             "tokens (data.reward_scale); for a checkpoint's own problems use data=file data.path=... "
             "data.train_path=... (R1's prompt, the math grader, the papers' reward sizes)")
        need(self.data.path is not None or self.data.task is not None, "data.path",
             "must name the held-out problems' file (or data.task set to generate them)")
        need(not train or self.data.train_path is not None or self.data.task is not None, "data.train_path",
             "must name the training problems' file for a training experiment (this data config is an evaluation "
             "set; or data.task set to generate problems)")
        tiny = self.model.tiny_that_runs()
        if tiny is not None:  # with the recipe's values (num_heads null) too, here and not at the bootstrap
            try:
                resolved = dataclasses.replace(tiny, task=self.data.task).resolved()
            except ValueError as e:
                style = self.data.task.style
                why = "" if tiny.num_heads is not None or "num_heads" not in str(e) else (
                    f"; num_heads is null: the {style} recipe's {RECIPES[style]['num_heads']}")
                raise ConfigError(f"model.tiny.{e}{why}") from None
            head = resolved.hidden_size // resolved.num_heads
            need(self.cluster.rollout.num_gpus > 0 or head in VLLM_CPU_HEAD_SIZES, "model.tiny.num_heads",
                 f"({resolved.num_heads}) gives heads of {head} dimensions (hidden_size {resolved.hidden_size}), which "
                 f"vLLM's CPU attention does not run (it runs {', '.join(map(str, VLLM_CPU_HEAD_SIZES))}): the engine "
                 f"would fail at its start, after the bootstrap")
            limit = self.rollout.engine.get("max_model_len")
            need(not limit or tiny.max_position_embeddings >= int(limit), "model.tiny.max_position_embeddings",
                 f"({tiny.max_position_embeddings}) must be >= rollout.engine.max_model_len ({limit}): vLLM refuses a "
                 f"context longer than the model's positions, and would refuse it only after the bootstrap")
        a, world = self.algorithm, self.cluster.learner.world_size
        need(a.ppo_mini_batch_size * a.n_samples >= world, "algorithm.ppo_mini_batch_size",
             f"* algorithm.n_samples must be >= cluster.learner.world_size ({world}): every rank needs a sample")
        need(not train or self.trainer.sft.batch_size >= world, "trainer.sft.batch_size",
             f"must be >= cluster.learner.world_size ({world}): every rank needs a row of each SFT batch")
        learner = self.cluster.learner
        pushed, engine = learner.param_dtype or learner.dtype, self.rollout.engine.get("dtype")
        engine = {"half": "float16", "float": "float32"}.get(engine, engine)  # vLLM's aliases
        need(not train or engine == pushed, "rollout.engine.dtype",
             f"({self.rollout.engine.get('dtype')}) must be the dtype the learners push their weights in "
             f"(cluster.learner.param_dtype, else cluster.learner.dtype: {pushed}): vLLM would cast them silently "
             f"(auto or unset: vLLM downcasts a float32 checkpoint) and sample from another policy than the one the "
             f"learners score")
        most = self.rollout.engine.get("max_logprobs", 20)  # vLLM's default: 20 per token; -1: the vocabulary
        asked = (("trainer.eval.topk_logprobs", self.trainer.eval.topk_logprobs),) if train else (
            ("rollout.topk_logprobs", self.rollout.topk_logprobs),)  # each pipeline's own; the other's is not read
        for key, k in asked:
            need(most == -1 or k <= most, key, f"({k}) must be at most the engines' rollout.engine.max_logprobs "
                                               f"({most}): vLLM refuses a request for more, at the first generation")
        share = self.cluster.rollout.num_gpus
        util = float(self.rollout.engine.get("gpu_memory_utilization") or 0.9)  # vLLM's default: 0.9
        need(not 0 < share < 1 or util <= share, "rollout.engine.gpu_memory_utilization",
             f"({util:g}) must be at most the engine's share of its GPU (cluster.rollout.num_gpus: {share:g}): vLLM "
             f"reserves that fraction of the whole GPU's memory, and Ray places whatever else takes the rest of the "
             f"GPU (another engine, the reference) beside it")
        custom = self.reward.get("custom")
        if isinstance(custom, dict) and custom.get("path"):  # the reward actor may run elsewhere: an absolute path
            custom["path"] = str(Path(custom["path"]).expanduser().resolve())
        try:
            stages = stage_rewards(self.reward)
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"reward: {e}") from None
        if train:
            check_stage_rewards(stages, a)
            reached = stages_reached(a.phase, self.trainer.grpo.steps)
            if a.phase.mode in ("entropy", "fixed") and len(reached) < 2:
                logging.getLogger(__name__).warning(
                    "algorithm.phase.mode=%s cannot leave the %s stage within trainer.grpo.steps=%d (%s): this run is "
                    "%s-only", a.phase.mode, reached[0], self.trainer.grpo.steps,
                    f"fixed_compress_steps={a.phase.fixed_compress_steps}" if a.phase.mode == "fixed" else
                    f"the earliest switch follows step max(min_steps, window + patience - 1) = "
                    f"{max(a.phase.min_steps, a.phase.window + a.phase.patience - 1)}", reached[0])
        check_context(self, prompt_tokens=1, max_model_len=tiny and tiny.max_position_embeddings)

    def to_dict(self) -> dict:
        """Plain JSON-able data (tuples as lists): for the run directory and the trackers."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))


def check_stage_rewards(stages: dict, a: AlgorithmConfig) -> None:
    """ConfigError unless every phase stage that ``algorithm.phase.mode`` reaches has a reward that can pay (a gate
    alone multiplies nothing), no stage is one the controller does not know, and no ``absolute``-advantage stage
    pays a wrong answer (``rewards.pays_wrong_answers``)."""
    from stepentropy_rl.rewards import pays_wrong_answers

    unknown = sorted(set(stages) - set(STAGES))
    need(not unknown, "reward.stages", f"has {', '.join(map(repr, unknown))}, not a phase stage; the stages are "
                                       f"{list(STAGES)}")
    mode = a.phase.mode
    for stage in STAGES if mode in ("entropy", "fixed") else (mode,):
        need(stage in stages, "reward.stages", f"has no stage {stage!r}, which algorithm.phase.mode={mode} reaches")
        need(any(not t.gate and t.weight != 0 for t in stages[stage].terms), f"reward.stages.{stage}",
             "has no term that pays (gates alone, or weights 0): every reward of the stage would be 0")
        need(a.adv_estimator[stage] != "absolute" or not pays_wrong_answers(stages[stage]), f"reward.stages.{stage}",
             f"pays wrong answers, and algorithm.adv_estimator.{stage} is absolute (A = beta * max(R, 0)): it would "
             f"reinforce them; gate the stage's terms on correctness (e.g. only_correct) or use grpo")


def build(cfg: DictConfig | dict, check_paths: bool = True) -> JobConfig:
    """The typed config of a composed Hydra config: every key checked, ConfigError naming the first bad one.
    ``check_paths=False`` checks a config for another machine (model and data files need not exist here)."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.pop("hydra", None)
    job = from_dict(JobConfig, raw)
    if check_paths:
        from stepentropy_rl.data import prepare_hint

        for key, path, is_dir in (("model.path", job.model.path, True), ("data.path", job.data.path, False),
                                  ("data.train_path", job.data.train_path if job.pipeline == "train" else None,
                                   False)):
            if path is not None:
                p = Path(path).expanduser()
                if not (p.is_dir() if is_dir else p.exists()):  # data: a file or a dataset directory
                    raise ConfigError(f"{key}: no such {'model directory' if is_dir else 'file'} {path!r}"
                                      + ("" if is_dir else prepare_hint(p)))
                if is_dir and not (p / "config.json").is_file():
                    inside = sorted(q.name for q in p.iterdir() if q.is_dir())[:5]
                    raise ConfigError(f"{key}: {path!r} holds no config.json: not a Hugging Face model directory"
                                      + (f" (its folders: {', '.join(inside)})" if inside else ""))
    return job


def context_needs(cfg: JobConfig, problems: str | None = None) -> dict[str, int]:
    """Tokens each generation needs beyond its prompt, by the config key that sets them. Pruned-thinking answer
    regeneration continues a CoT of up to ``rollout.max_tokens``. ``problems``: the budgets of the training problems
    (``"train"``: the prune stage and GRPO) or of the held-out ones (``"eval"``: a training job only evaluates on
    them), None for all."""
    r = cfg.rollout
    if cfg.pipeline == "prune_study":
        return {"rollout.max_tokens + rollout.answer_max_tokens": r.max_tokens + r.answer_max_tokens}
    t = cfg.trainer
    train = {"rollout.max_tokens + trainer.prune.answer_max_tokens": r.max_tokens + t.prune.answer_max_tokens,
             "trainer.grpo.max_tokens": t.grpo.max_tokens}
    held_out = {"trainer.eval.max_tokens": t.eval.max_tokens}
    return {"train": train, "eval": held_out}.get(problems, {**train, **held_out})


def check_context(cfg: JobConfig, prompt_tokens: int, max_model_len: int | None = None,
                  problems: str | None = None) -> None:
    """ConfigError unless a prompt of ``prompt_tokens`` plus each generation budget (of ``problems``,
    ``context_needs``) fits the engine's context (``rollout.engine.max_model_len``, else ``max_model_len``, e.g. the
    model's ``max_position_embeddings``): vLLM would cut the response short without an error."""
    limit = cfg.rollout.engine.get("max_model_len") or max_model_len
    if not limit:
        return
    source = "rollout.engine.max_model_len" if cfg.rollout.engine.get("max_model_len") else \
        "max_model_len (null: the model's max_position_embeddings)"
    for key, n in context_needs(cfg, problems).items():
        need(prompt_tokens + n <= int(limit), key,
             f"= {n} plus a prompt of {prompt_tokens} tokens exceeds the engine's context {source} = {limit}: raise "
             f"max_model_len or lower the budget")
