"""The one batch type, from rollout to loss: prompt+response token ids as tensors, per-token and per-sample columns
that each worker adds, and per-sample metadata (verl's ``DataProto``, smaller).

Layout: row ``i`` holds ``prompt_i + response_i`` right-padded to the batch width ``T``. ``loss_mask[i, t]`` is 1 on
response tokens. A per-token column ``c`` ([B, T] float) is aligned with the ids: ``c[i, t]`` belongs to token
``input_ids[i, t]``, predicted from ``input_ids[i, :t]`` (0 elsewhere). A per-sample column is a [B] tensor;
``meta`` holds per-sample Python values (texts, answers). Workers return columns, and the driver ``union``s them
in: nothing travels between actors as lists of floats.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Batch:
    """B samples in the layout of the module docstring. Build it with :meth:`from_pairs`; add a worker's columns with
    :meth:`union`; cut it with :meth:`select` (rows), :meth:`chunk` (micro-batches) and :meth:`padded_rows`."""

    input_ids: torch.Tensor  # [B, T] long, right-padded
    attention_mask: torch.Tensor  # [B, T] long
    loss_mask: torch.Tensor  # [B, T] float, 1 on response tokens
    prompt_lens: torch.Tensor  # [B] long
    columns: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B, T] per token or [B] per sample
    meta: dict[str, list] = field(default_factory=dict)  # name -> B Python values

    # ---- building ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pairs(cls, prompts: list[list[int]], responses: list[list[int]], pad_id: int, **meta) -> "Batch":
        """Rows ``prompt + response`` right-padded with ``pad_id``; ``meta``: per-sample lists (e.g. ``text=...``).

        >>> b = Batch.from_pairs([[1, 2], [3]], [[4], [5, 6]], pad_id=0, answer=["4", "6"])
        >>> b.input_ids.tolist(), b.loss_mask.tolist(), b.response_ids(1), b.meta["answer"]
        ([[1, 2, 4], [3, 5, 6]], [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [5, 6], ['4', '6'])
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (the first response token must be predicted)")
        width = max((len(p) + len(r) for p, r in zip(prompts, responses)), default=1)
        shape = (len(prompts), width)
        ids = torch.full(shape, pad_id, dtype=torch.long)
        attn = torch.zeros(shape, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.float32)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids[i, : len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.long)
            attn[i, : len(p) + len(r)] = 1
            mask[i, len(p): len(p) + len(r)] = 1.0
        lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        batch = cls(ids, attn, mask, lens)
        return batch.union(meta=meta) if meta else batch

    def union(self, columns: dict[str, torch.Tensor] | None = None, meta: dict[str, list] | None = None) -> "Batch":
        """A batch with these columns added (a name already present is an error, as in verl's ``union``)."""
        columns, meta = dict(columns or {}), dict(meta or {})
        for name, col in columns.items():
            if name in self.columns:
                raise ValueError(f"column {name!r} is already in the batch")
            col = torch.as_tensor(col)
            if col.shape[0] != len(self) or (col.dim() == 2 and col.shape[1] != self.width) or col.dim() > 2:
                raise ValueError(f"column {name!r} has shape {tuple(col.shape)}; the batch is {len(self)} x {self.width}")
            columns[name] = col
        for name, values in meta.items():
            if name in self.meta:
                raise ValueError(f"meta {name!r} is already in the batch")
            if len(values) != len(self):
                raise ValueError(f"meta {name!r} has {len(values)} values for {len(self)} samples")
        return replace(self, columns={**self.columns, **columns}, meta={**self.meta, **{k: list(v) for k, v in meta.items()}})

    # ---- views ---------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def width(self) -> int:
        """T: the padded row length."""
        return self.input_ids.shape[1]

    @property
    def response_lens(self) -> torch.Tensor:
        """[B] response tokens per row."""
        return self.loss_mask.sum(dim=1).long()

    def prompt_ids(self, i: int) -> list[int]:
        """Row ``i``'s prompt ids."""
        return self.input_ids[i, : int(self.prompt_lens[i])].tolist()

    def response_ids(self, i: int) -> list[int]:
        """Row ``i``'s response ids (its sampled tokens, EOS included if sampled)."""
        p = int(self.prompt_lens[i])
        return self.input_ids[i, p: p + int(self.response_lens[i])].tolist()

    def last_response_index(self) -> torch.Tensor:
        """[B] position of each response's last token (of its prompt's last token if the response is empty)."""
        return self.prompt_lens + self.response_lens - 1

    def response_column(self, values) -> torch.Tensor:
        """A [B, T] per-token column from each response's values (sequences of the response lengths).

        >>> b = Batch.from_pairs([[1, 2], [3]], [[4], [5, 6]], pad_id=0)
        >>> b.response_column([[0.5], [0.25, 0.75]]).tolist()
        [[0.0, 0.0, 0.5], [0.0, 0.25, 0.75]]
        """
        col = torch.zeros(self.input_ids.shape, dtype=torch.float32)
        for i, v in enumerate(values):
            p, r = int(self.prompt_lens[i]), int(self.response_lens[i])
            if len(v) != r:
                raise ValueError(f"row {i}: {len(v)} values for {r} response tokens")
            col[i, p: p + r] = torch.as_tensor(v, dtype=torch.float32)
        return col

    def per_response(self, name: str) -> list[torch.Tensor]:
        """A per-token column cut into each response's values (1-D tensors of the response lengths)."""
        col, out = self.columns[name], []
        for i in range(len(self)):
            p = int(self.prompt_lens[i])
            out.append(col[i, p: p + int(self.response_lens[i])])
        return out

    # ---- slicing -------------------------------------------------------------------------------------------------
    def select(self, rows) -> "Batch":
        """The rows ``rows`` (indices), in that order, at the same width."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        pick = (lambda t: t[idx])
        return Batch(pick(self.input_ids), pick(self.attention_mask), pick(self.loss_mask), pick(self.prompt_lens),
                     {k: pick(v) for k, v in self.columns.items()},
                     {k: [v[i] for i in idx.tolist()] for k, v in self.meta.items()})

    def trimmed(self) -> "Batch":
        """The same rows without the padding columns that no row uses (a micro-batch computes on less)."""
        used = int(self.attention_mask.sum(dim=1).max()) if len(self) else 0
        used = max(1, used)
        cut = (lambda t: t[:, :used] if t.dim() == 2 else t)
        return Batch(cut(self.input_ids), cut(self.attention_mask), cut(self.loss_mask), self.prompt_lens,
                     {k: cut(v) for k, v in self.columns.items()}, self.meta)

    def chunk(self, size: int) -> list["Batch"]:
        """Consecutive micro-batches of ``size`` rows, each trimmed to its own width."""
        return [self.select(range(i, min(i + size, len(self)))).trimmed() for i in range(0, len(self), size)]

    def padded_rows(self, n: int) -> "Batch":
        """This batch plus ``n`` copies of row 0 with an empty loss mask (they add nothing to any loss): every
        learner rank must run the same number of micro-batches."""
        if n == 0:
            return self
        pad = self.select([0] * n)
        pad.loss_mask.zero_()
        return Batch.concat([self, pad])

    @staticmethod
    def concat(batches: list["Batch"], pad_id: int = 0) -> "Batch":
        """Rows of every batch in order, padded to the widest (columns must match)."""
        width = max(b.width for b in batches)

        def cat(ts, fill):
            return torch.cat([t if t.dim() == 1 or t.shape[1] == width else
                              torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in ts])

        first = batches[0]
        return Batch(cat([b.input_ids for b in batches], pad_id), cat([b.attention_mask for b in batches], 0),
                     cat([b.loss_mask for b in batches], 0), torch.cat([b.prompt_lens for b in batches]),
                     {k: cat([b.columns[k] for b in batches], 0) for k in first.columns},
                     {k: [v for b in batches for v in b.meta[k]] for k in first.meta})


def shard(n: int, world_size: int) -> list[range]:
    """``range(n)`` cut into ``world_size`` contiguous slices whose sizes differ by at most one.

    >>> shard(5, 2)
    [range(0, 3), range(3, 5)]
    """
    k, extra = divmod(n, world_size)
    out, start = [], 0
    for r in range(world_size):
        end = start + k + (1 if r < extra else 0)
        out.append(range(start, end))
        start = end
    return out
