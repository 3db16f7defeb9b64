"""The one batch format the driver hands to learners: right-padded prompt+response ids with per-token fields.

Per-response-token values (old log-probs, reference log-probs, advantages) sit at the positions of the response
tokens they belong to, so ``field[b, t]`` refers to token ``input_ids[b, t]`` predicted from ``input_ids[b, :t]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

TOKEN_FIELDS = ("old_logprobs", "ref_logprobs", "advantages")


@dataclass
class Sequence:
    """One training sample: prompt and response ids, optional per-response-token values."""

    prompt_ids: list[int]
    response_ids: list[int]
    values: dict = field(default_factory=dict)  # name -> list[float] of len(response_ids)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T] float, 1 on response tokens
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(seqs: list[Sequence], pad_id: int) -> MicroBatch:
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in seqs)
    shape = (len(seqs), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    attn = torch.zeros(shape, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.float32)
    extra = {name: torch.zeros(shape, dtype=torch.float32) for name in TOKEN_FIELDS
             if all(name in s.values for s in seqs)}
    for i, s in enumerate(seqs):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
        attn[i, : p + r] = 1
        mask[i, p: p + r] = 1.0
        for name, t in extra.items():
            vals = s.values[name]
            if len(vals) != r:
                raise ValueError(f"{name}: {len(vals)} values for {r} response tokens")
            t[i, p: p + r] = torch.tensor(vals, dtype=torch.float32)
    return MicroBatch(ids, attn, mask, **extra)


def micro_batches(seqs: list[Sequence], size: int, pad_id: int) -> list[MicroBatch]:
    return [collate(seqs[i: i + size], pad_id) for i in range(0, len(seqs), size)]


def response_values(per_token: torch.Tensor, seqs: list[Sequence]) -> list[list[float]]:
    """Cut a [B, T] tensor back into per-sample lists over each response's tokens."""
    out = []
    for i, s in enumerate(seqs):
        p, r = len(s.prompt_ids), len(s.response_ids)
        out.append(per_token[i, p: p + r].tolist())
    return out


def shard(items: list, world_size: int) -> list[list]:
    """Split ``items`` into ``world_size`` contiguous slices whose sizes differ by at most one."""
    k, extra = divmod(len(items), world_size)
    out, start = [], 0
    for r in range(world_size):
        end = start + k + (1 if r < extra else 0)
        out.append(items[start:end])
        start = end
    return out

