"""What each training stage's result depends on in the config: a rerun of a ``run_dir`` keeps its finished stages, so
one made with another config (a sweep job that resumed another's directory, a changed ``trainer.prune.ratio``) would
mix two experiments in one report without a word. Every stage marker records the config it ran under; a rerun whose
config differs in a key that a finished stage depends on is refused, naming the key.

A stage depends on the keys of its own row below and of every row before it (the pipeline is sequential); a key in
no row is taken to decide everything (``init``); ``IGNORED`` keys decide nothing a stage writes.
"""
from __future__ import annotations

from typing import Any

from stepentropy_rl.config import RUN_ONLY
from stepentropy_rl.tiny_config import RESOLVED

ORDER = ("init", "eval_base", "prune", "sft", "eval_sft", "grpo", "eval_final")

# the first stage whose result each key (or key prefix) decides; the longest prefix wins
FIRST_STAGE = {
    "model": "init",
    "data": "eval_base", "trainer.eval": "eval_base", "rollout": "eval_base", "cluster.rollout": "eval_base",
    # the CoTs the prune stage and the study write; the evaluations sample with trainer.eval's
    "rollout.temperature": "prune", "rollout.max_tokens": "prune", "rollout.answer_temperature": "prune",
    "trainer.n_train": "prune", "trainer.prune": "prune", "reference": "prune", "cluster.reference": "prune",
    "trainer.sft": "sft", "trainer.optim": "sft", "trainer.micro_batch_size": "sft", "cluster.learner": "sft",
    "seed": "sft",
    "algorithm": "grpo", "reward": "grpo", "trainer.grpo": "grpo",
}
# what no training stage's output depends on: RUN_ONLY and the static study's own keys
IGNORED = RUN_ONLY + (
    "pipeline", "pruning", "rollout.answer_max_tokens", "rollout.topk_logprobs",  # the static study's alone
    "data.reward_scale",  # decides only the reward keys it fills, which are recorded resolved (reward.*)
)


# keys added after runs began recording their config, with the value every run had before the key existed: a marker
# without one is read as that value, so a run made before the key resumes, and a change from it is still refused
ADDED = {"trainer.grpo.optimizer": "continue", "cluster.learner.autocast_bf16": False, "model.tiny.fp32_head": False,
         "data.task.recap_openers": 1, "model.tiny.task.recap_openers": 1,
         "model.tiny.stable_steps": 0, "model.tiny.init_std": 0.02}
# keys once one value and now one per phase stage: an older marker's value is read as every stage's
PER_STAGE = {"algorithm.norm_adv_by_std": ("compress", "explore")}


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def decisive(config: dict, prefix: str = "", ignored: tuple = IGNORED) -> dict[str, Any]:
    """``config`` (nested, as ``JobConfig.to_dict()``) flattened to dotted keys, less the ``ignored`` ones.

    >>> decisive({"run_dir": "/r", "trainer": {"prune": {"ratio": 0.8, "cache": True}, "logger": {"group": None}}})
    {'trainer.prune.ratio': 0.8}
    """
    out = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if any(_under(key, i) for i in ignored):
            continue
        if isinstance(v, dict) and v:
            out.update(decisive(v, key + ".", ignored))
        else:
            out[key] = v
    return out


def same_results(a: dict, b: dict) -> bool:
    """Whether two jobs' configs (nested) agree in every key outside ``RUN_ONLY``: the same results.

    >>> same_results({"seed": 0, "trainer": {"logger": {"group": "sweep"}}}, {"seed": 0, "trainer": {"logger": {}}})
    True
    """
    return decisive(a or {}, ignored=RUN_ONLY) == decisive(b or {}, ignored=RUN_ONLY)


def first_stage(key: str) -> str:
    """The first stage whose result ``key`` decides (``init`` for a key in no row).

    >>> first_stage("trainer.prune.ratio"), first_stage("rollout.max_tokens"), first_stage("new.key")
    ('prune', 'prune', 'init')
    """
    matches = [p for p in FIRST_STAGE if _under(key, p)]
    return FIRST_STAGE[max(matches, key=len)] if matches else "init"


def conflicts(recorded: dict[str, dict], current: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """``(stage, key, then, now)`` for each finished stage (``recorded``: stage -> the config its marker holds,
    ``decisive`` form) and each key it depends on whose value differs in ``current``; "(unset)" for a key one side
    lacks. Stages whose marker holds no config (written before markers did) are not checked."""
    found = []
    for stage in ORDER:
        then = recorded.get(stage)
        if then is None:
            continue
        for key, stages in PER_STAGE.items():
            if key in then:
                then = {**{k: v for k, v in then.items() if k != key}, **{f"{key}.{s}": then[key] for s in stages}}
        upto = ORDER.index(stage)
        for key in sorted(set(then) | set(current)):
            if ORDER.index(first_stage(key)) > upto or any(_under(key, i) for i in IGNORED):  # an older marker's
                continue  # record of a key found since to decide nothing
            a, b = then.get(key, ADDED.get(key, "(unset)")), current.get(key, "(unset)")
            # the tiny reasoner's recipe is recorded resolved since 2026-12-05 (``train.stage_inputs``); None in an
            # older marker meant "the recipe of that day", unknown now (``train.check_same_tiny`` compares the model)
            if a is None and key.removeprefix("model.tiny.") in RESOLVED:
                continue
            # fp32 training has its logits in fp32 whatever fp32_head says (recorded resolved since 2026-12-06)
            if key == "model.tiny.fp32_head" and then.get("model.tiny.bf16") is False \
                    and current.get("model.tiny.bf16") is False:
                continue
            if a != b:
                found.append((stage, key, a, b))
    return found
