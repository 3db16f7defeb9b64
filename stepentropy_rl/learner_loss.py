"""Losses the learners optimise, on a micro-batch: SFT (NLL on response tokens) and GRPO (verl policy loss + KL)."""
from __future__ import annotations

import torch

from stepentropy_rl import algorithms
from stepentropy_rl.batch import Batch


# Metrics that are this micro-batch's share of a global aggregate: learners sum them over micro-batches.
SHARED_METRICS = ("sft/nll", "actor/pg_loss", "actor/kl_loss")


def step_metrics(per_micro_batch: list[tuple[dict, bool]]) -> dict:
    """A rank's metrics of one optimizer step from its micro-batches' ``(metrics, has_tokens)``: shares of a global
    aggregate (``SHARED_METRICS``) summed, every other metric averaged over the micro-batches that hold response
    tokens. A micro-batch of padding rows only (a rank's slice one row short of the longest, at a micro-batch
    boundary) reports 0 for its means, which averaged in would dilute them.

    >>> step_metrics([({"actor/pg_loss": 0.5, "actor/pg_clipfrac": 0.2}, True),
    ...               ({"actor/pg_loss": 0.0, "actor/pg_clipfrac": 0.0}, False)])
    {'actor/pg_loss': 0.5, 'actor/pg_clipfrac': 0.2}
    """
    real = max(1, sum(has for _, has in per_micro_batch))
    totals: dict[str, float] = {}
    for metrics, has in per_micro_batch:
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + (v if k in SHARED_METRICS else v / real if has else 0.0)
    return totals


def compute_loss(logprobs: torch.Tensor, mb: Batch, loss: dict, global_batch: dict | None = None,
                 old_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """``logprobs``: [B, T] log-probs of ``mb.input_ids`` (0 outside the loss mask). Returns (loss, metrics).

    GRPO reads ``mb``'s columns ``advantages``, ``old_logprobs`` (unless ``old_logprobs`` is given: the update's own
    detached forward) and ``ref_logprobs`` (when ``loss['kl_coef'] > 0``), each [B, T] like ``logprobs``.

    Without ``global_batch`` the loss is this micro-batch's own aggregate (an empty mask gives 0). With it
    (``algorithms.global_batch_info`` over all micro-batches of all ranks) the loss is this micro-batch's share:
    summed over micro-batches and averaged over ranks it is the aggregate of the whole batch, so every response
    token weighs the same whichever rank or micro-batch it lands in. ``loss['loss_scale_factor']`` is the constant
    that ``seq-mean-token-sum-norm`` divides by (verl's default, the padded width, depends on the split).
    """
    mask = mb.loss_mask.to(logprobs.device)
    gb = dict(global_batch or algorithms.global_batch_info([mask]))
    if loss.get("loss_scale_factor"):  # seq-mean-token-sum-norm: a constant, not the micro-batch's padded width
        gb["loss_scale_factor"] = float(loss["loss_scale_factor"])  # 1.5 is not 1
    if loss["kind"] == "sft":
        value = algorithms.aggregate(-logprobs, mask, "token-mean", **gb)
        return value, {"sft/nll": float(value.detach())}
    if loss["kind"] != "grpo":
        raise ValueError(f"loss kind must be sft or grpo, got {loss['kind']!r}")
    old = (old_logprobs if old_logprobs is not None else mb.columns["old_logprobs"]).to(logprobs.device)
    adv = mb.columns["advantages"].to(logprobs.device)
    pg, metrics = algorithms.policy_loss(old, logprobs, adv, mask, clip_ratio_low=loss["clip_ratio_low"],
                                         clip_ratio_high=loss["clip_ratio_high"], clip_ratio_c=loss["clip_ratio_c"],
                                         loss_agg_mode=loss["loss_agg_mode"], global_batch=gb)
    out = {f"actor/{k}": float(v) for k, v in metrics.items()}
    out["actor/pg_loss"] = float(pg.detach())
    value = pg
    if loss.get("kl_coef", 0.0) > 0:
        if "ref_logprobs" not in mb.columns:  # dropping the KL term silently would train another objective
            raise ValueError(f"kl_coef is {loss['kl_coef']} but the batch has no ref_logprobs column: the reference "
                             f"must score the batch before the update (or set algorithm.kl_coef=0)")
        kl = algorithms.kl_loss(logprobs, mb.columns["ref_logprobs"].to(logprobs.device), mask, kind=loss["kl_type"],
                                loss_agg_mode=loss["loss_agg_mode"], global_batch=gb)
        value = value + loss["kl_coef"] * kl
        out["actor/kl_loss"] = float(kl.detach())
    return value, out
