"""Thin, typed adapter over verl 0.9.1's ``verl.trainer.ppo.core_algos`` (all CPU-safe).

The rest of the project calls these functions and never touches verl internals:

* our positive-only "absolute" estimator registers itself in verl's registry on import;
* :func:`compute_advantages` dispatches any registered estimator ("grpo", "rloo", "absolute", ...);
* :func:`policy_loss` / :func:`kl_loss` / :func:`entropy_loss` / :func:`aggregate` wrap verl's
  policy-loss registry, ``kl_penalty`` and ``agg_loss``.

Tensors are ``(batch, response_length)``; masks are 1 on valid response tokens, 0 on padding.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Optional

import numpy as np
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos
from verl.utils.torch_functional import entropy_from_logits
from verl.workers.config import ActorConfig

from stepentropy_rl.verl_names import ABSOLUTE, LOSS_AGG_MODES


def _register_ours(name: str):
    """verl's ``register_adv_est`` at import, tolerant of a stale copy of our own function (``importlib.reload``)."""
    def deco(fn):
        current = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
        if current is not None and current is not fn:
            ours = (getattr(current, "__module__", None), getattr(current, "__qualname__", None)) == (
                fn.__module__, fn.__qualname__)
            if not ours:
                raise ValueError(f"advantage estimator {name!r} is already registered to {current!r}")
            del core_algos.ADV_ESTIMATOR_REGISTRY[name]
        if current is not fn:
            core_algos.register_adv_est(name)(fn)
        return fn
    return deco


@_register_ours(ABSOLUTE)
def compute_absolute_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Optional[np.ndarray] = None,
    config: Optional[Any] = None,
    beta: Optional[float] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive-only absolute advantage (entropy-guided CoT compression).

    For sample i with outcome reward ``R_i = sum_t r_{i,t}``, every valid token t gets

        A_{i,t} = beta * max(R_i, 0) * mask_{i,t}

    i.e. no group baseline and no std normalisation; ``index`` (group ids) is accepted only for
    registry compatibility. ``beta`` comes from the keyword, else ``config.get("beta")``
    (e.g. a DictConfig), else 1.0. Returns ``(advantages, returns)``, both equal, like verl's
    outcome estimators.
    """
    if beta is None:
        beta = config.get("beta", None) if config is not None and hasattr(config, "get") else None
    beta = 1.0 if beta is None else float(beta)
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1).clamp(min=0.0) * beta
        adv = scores.unsqueeze(-1) * response_mask.to(scores.dtype)
    return adv, adv


def register_absolute_advantage() -> None:
    """(Re-)register "absolute" in verl's registry (idempotent); importing this module already did it."""
    _register_ours(ABSOLUTE)(compute_absolute_advantage)


def known_estimators() -> list[str]:
    """Names accepted by :func:`compute_advantages` (verl's registry, "absolute" included)."""
    return sorted(core_algos.ADV_ESTIMATOR_REGISTRY)


def compute_advantages(
    name: str,
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    group_ids: np.ndarray,
    norm_by_std: bool = True,
    beta: float = 1.0,
    components: Optional[dict[str, tuple[float, torch.Tensor]]] = None,
) -> torch.Tensor:
    """Per-token advantages from estimator ``name`` (``algorithm.adv_estimator``).

    ``group_ids[i]`` is the prompt id of sample i (verl's ``uid``). ``norm_by_std`` maps to
    ``norm_adv_by_std_in_grpo`` (GRPO family; False = Dr.GRPO), ``beta`` to "absolute".
    ``components`` (needed by "gdpo"): each reward term's ``(weight, [B] values)``, normalised within its
    groups on its own before the weighted sum (:func:`gdpo_advantages`).
    Estimators needing extra inputs (e.g. "gae" needs critic values) raise ``TypeError``.
    """
    known = known_estimators()
    if name not in known:
        raise ValueError(f"unknown algorithm.adv_estimator {name!r}; known: {', '.join(known)}")
    if name == "gdpo":
        if not components:
            raise ValueError("adv_estimator gdpo needs the reward's terms (components), one column each")
        return gdpo_advantages(components, response_mask, group_ids, norm_by_std)
    fn = core_algos.get_adv_estimator_fn(name)
    mask = response_mask.to(token_level_rewards.dtype)
    config = AlgoConfig(adv_estimator=name, norm_adv_by_std_in_grpo=norm_by_std)
    kwargs: dict[str, Any] = dict(token_level_rewards=token_level_rewards, response_mask=mask,
                                  index=np.asarray(group_ids), config=config)
    params = inspect.signature(fn).parameters
    if "norm_adv_by_std_in_grpo" in params:
        kwargs["norm_adv_by_std_in_grpo"] = norm_by_std
    if "beta" in params:
        kwargs["beta"] = beta
    advantages, _returns = fn(**kwargs)
    return advantages


def gdpo_advantages(components: dict[str, tuple[float, torch.Tensor]], response_mask: torch.Tensor,
                    group_ids: np.ndarray, norm_by_std: bool = True) -> torch.Tensor:
    """GDPO (arXiv 2601.05242) through verl's ``compute_gdpo_outcome_advantage``: each reward term k normalised within
    each prompt group on its own, then weighted and summed, then whitened over the batch's samples,

        A = whiten_samples(sum_k w_k (r_k - mean_group(r_k)) / (std_group(r_k) + eps)),

    so that a term with a large spread (length shaping) does not drown one with a small spread (correctness).
    ``components``: term -> ``(w_k, [B] r_k)``. verl reads the terms from its own batch layout (prompt and response
    halves); here each sample's values go at its last response token, as ``token_level_rewards`` carry them. verl
    whitens over tokens, where a long response weighs more and the mean it takes away is not 0: every advantage moved
    with the lengths, and a group whose samples all earned the same got one. It is handed one token per answered
    sample, so that the whitening weighs samples as the paper's does, and the result is spread over each response."""
    names = list(components)
    mask = response_mask.to(torch.float32)
    answered = mask.sum(dim=1) > 0  # an empty response carries no reward (``outcome_rewards`` leaves it 0)
    last = (mask * torch.arange(mask.shape[1])).argmax(dim=1)  # a sample's last response token (0 if none)
    positions = (torch.arange(mask.shape[1]) <= last[:, None]).long()
    one = torch.zeros_like(mask)  # each answered sample's last token: the whitening's weights
    one[torch.arange(mask.shape[0]), last] = answered.float()
    config = AlgoConfig(adv_estimator="gdpo", norm_adv_by_std_in_grpo=norm_by_std, gdpo_reward_keys=names,
                        gdpo_reward_weights=[float(components[k][0]) for k in names])
    fn = core_algos.get_adv_estimator_fn("gdpo")
    non_tensor = {k: (components[k][1].float() * answered).numpy() for k in names}
    advantages, _ = fn(token_level_rewards=torch.zeros_like(mask), response_mask=one, index=np.asarray(group_ids),
                       norm_adv_by_std_in_grpo=norm_by_std, config=config, non_tensor_batch=non_tensor,
                       batch={"prompts": torch.zeros(mask.shape[0], 0), "attention_mask": positions})
    return advantages.sum(dim=1, keepdim=True) * mask


@functools.lru_cache(maxsize=32)
def actor_config(clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.28, clip_ratio_c: float = 3.0,
                 loss_agg_mode: str = "token-mean") -> ActorConfig:
    """Minimal verl ``ActorConfig`` for the policy-loss functions (cached; treat as read-only).

    verl's vanilla loss reads ``clip_ratio``, ``clip_ratio_low``, ``clip_ratio_high``,
    ``get("clip_ratio_c")`` and ``global_batch_info`` (left empty = single process, local
    normalisation). Other registered losses read ``policy_loss.*`` sub-config defaults.
    """
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=clip_ratio_low,
                       clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c,
                       loss_agg_mode=loss_agg_mode)


def policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    loss_name: str = "vanilla",
    global_batch: Optional[dict] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip policy loss via verl's policy-loss registry (``actor.policy_loss.loss_mode``).

    Vanilla: ratio = exp(log_prob - old_log_prob); per token
    ``max(-A*ratio, -A*clip(ratio, 1-low, 1+high))``, and for A < 0 additionally capped at
    ``-A*clip_ratio_c`` (dual clip), then aggregated with ``loss_agg_mode``. Metrics are verl's with
    the ``actor/`` prefix stripped: ``pg_clipfrac``, ``ppo_kl`` (approx KL, mean old-new
    log-ratio), ``pg_clipfrac_lower``. ``global_batch`` (see ``global_batch_info``) makes the loss this micro-batch's
    share of the global-batch aggregate, as verl's FSDP actor does.
    """
    if loss_name not in core_algos.POLICY_LOSS_REGISTRY:
        raise ValueError(f"unknown actor.policy_loss.loss_mode {loss_name!r}; "
                         f"known: {', '.join(sorted(core_algos.POLICY_LOSS_REGISTRY))}")
    _check_mode(loss_agg_mode)
    fn = core_algos.get_policy_loss_fn(loss_name)
    config = actor_config(float(clip_ratio_low), float(clip_ratio_high), float(clip_ratio_c), loss_agg_mode)
    if global_batch:
        config = dataclasses.replace(config, global_batch_info=dict(global_batch))
    loss, raw = fn(old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                   response_mask=response_mask.to(log_prob.dtype), loss_agg_mode=loss_agg_mode, config=config,
                   rollout_is_weights=None)
    metrics: dict[str, float] = {}
    for key, value in raw.items():
        try:
            metrics[key.removeprefix("actor/")] = float(value)
        except (TypeError, ValueError):
            continue
    return loss, metrics


def kl_loss(log_prob: torch.Tensor, ref_log_prob: torch.Tensor, response_mask: torch.Tensor,
            kind: str = "low_var_kl", loss_agg_mode: str = "token-mean",
            global_batch: Optional[dict] = None) -> torch.Tensor:
    """KL(pi || pi_ref) loss as verl's actor computes it: ``agg_loss(kl_penalty(...))``.

    ``kind``: "kl"/"k1", "abs", "mse"/"k2", "low_var_kl"/"k3" (k3 = exp(ref-lp) - (ref-lp) - 1,
    clamped to [-10, 10]); a trailing "+" (e.g. "k3+") uses k2's straight-through gradient.
    """
    _check_mode(loss_agg_mode)
    kld = core_algos.kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty=kind)
    return aggregate(kld, response_mask, loss_agg_mode, **(global_batch or {}))


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
              loss_scale_factor: Optional[float] = None, **global_batch) -> torch.Tensor:
    """verl's ``agg_loss``: token-mean = sum(v*m)/sum(m); seq-mean-token-mean = mean over non-empty rows of row
    token-means; seq-mean-token-sum = mean of row sums; -norm divides that by ``loss_scale_factor`` (default: padded
    length); token-sum = sum(v*m). With ``global_batch`` (see ``global_batch_info``) the sums are divided by the
    global counts and multiplied by dp_size, so that summing over micro-batches and averaging over ranks (FSDP's
    gradient reduction) gives the aggregate of the whole batch."""
    _check_mode(mode)
    return core_algos.agg_loss(loss_mat=values, loss_mask=mask.to(values.dtype), loss_agg_mode=mode,
                               loss_scale_factor=loss_scale_factor, **global_batch)


def global_batch_info(masks: list[torch.Tensor], dp_size: int = 1, all_reduce=None) -> dict:
    """verl's ``global_batch_info`` for this rank's micro-batch ``masks``: valid tokens and non-empty sequences
    summed over all ranks (``all_reduce`` sums a tensor in place across ranks; None on one process)."""
    counts = torch.zeros(2, dtype=torch.float64, device=masks[0].device if masks else "cpu")
    for m in masks:
        counts[0] += m.sum()
        counts[1] += (m.sum(-1) > 0).sum()
    if all_reduce is not None:
        all_reduce(counts)
    return {"dp_size": dp_size, "batch_num_tokens": max(1, int(counts[0])), "global_batch_size": max(1, int(counts[1]))}


def entropy_loss(entropy_or_logits: torch.Tensor, response_mask: torch.Tensor,
                 loss_agg_mode: str = "token-mean") -> torch.Tensor:
    """Aggregated (positive) entropy; the actor subtracts ``entropy_coeff * entropy_loss``.

    Accepts per-token entropy ``(bs, T)`` or logits ``(bs, T, vocab)`` (reduced with verl's
    ``entropy_from_logits``).
    """
    ent = entropy_from_logits(entropy_or_logits) if entropy_or_logits.dim() == 3 else entropy_or_logits
    return aggregate(ent, response_mask, loss_agg_mode)


def _check_mode(mode: str) -> None:
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown actor.loss_agg_mode {mode!r}; known: {', '.join(LOSS_AGG_MODES)}")
