"""Token entropies, teacher-forced scoring and step segmentation of chain-of-thought text.

All entropies are Shannon entropies in nats over the full vocabulary. Heavy ops are chunked over
rows so that a 151k-entry vocabulary never materialises more than ``chunk_rows x vocab`` fp32 values
at a time (about two such buffers peak).
"""
from __future__ import annotations

import inspect
import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

__all__ = [
    "StepSpan",
    "token_entropy",
    "token_logprobs",
    "score_responses",
    "segment_steps",
    "step_entropies",
    "topk_entropy",
]


def _rows(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension (the vocabulary)")
    return logits.reshape(-1, logits.shape[-1])


def token_entropy(logits: torch.Tensor, chunk_rows: int = 2048, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of softmax(logits / temperature) over the last dim; returns fp32 of shape
    ``logits.shape[:-1]``.

    Uses H = logsumexp(z) - sum softmax(z) * z, evaluated in fp32 on ``chunk_rows`` rows at a time
    (bf16/fp16 chunks are upcast before the division by ``temperature``, as vLLM's sampler scales them, so that the
    learner, the reference and the engines score the same distribution). ``-inf`` logits (masked tokens)
    contribute 0.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    flat = _rows(logits)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for i in range(0, flat.shape[0], chunk_rows):
        z = _scaled(flat[i : i + chunk_rows], temperature)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        pz = (z - lse).exp_().mul_(z).nan_to_num_(nan=0.0)  # p * z; 0 * -inf -> 0
        out[i : i + chunk_rows] = lse.squeeze(-1) - pz.sum(-1)
    return out.reshape(logits.shape[:-1])


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = 2048,
                   temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / temperature)[..., labels] in fp32, chunked and scaled like :func:`token_entropy`.

    ``labels`` has shape ``logits.shape[:-1]``; the result has the same shape. Differentiable: under autograd each
    chunk is checkpointed, so backward recomputes its fp32 log-softmax instead of keeping ``rows x vocab`` fp32
    values alive for the whole batch (with a 151k vocabulary that is the difference between one chunk and
    gigabytes).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels shape {tuple(labels.shape)} != logits.shape[:-1] {tuple(logits.shape[:-1])}")
    flat = _rows(logits)
    lab = labels.reshape(-1, 1).to(device=logits.device, dtype=torch.long)
    chunks = range(0, flat.shape[0], chunk_rows)
    if torch.is_grad_enabled() and logits.requires_grad:
        from torch.utils.checkpoint import checkpoint

        parts = [checkpoint(_chunk_logprobs, flat[i : i + chunk_rows], lab[i : i + chunk_rows], temperature,
                            use_reentrant=False) for i in chunks]
        return torch.cat(parts).reshape(labels.shape)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for i in chunks:
        out[i : i + chunk_rows] = _chunk_logprobs(flat[i : i + chunk_rows], lab[i : i + chunk_rows], temperature)
    return out.reshape(labels.shape)


def _scaled(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z`` in fp32 divided by ``temperature``: upcast first, so a bf16 logit is rounded once, not twice."""
    z = z.float()
    return z if temperature == 1.0 else z / temperature


def _chunk_logprobs(z: torch.Tensor, lab: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    z = _scaled(z, temperature)
    return z.gather(-1, lab).squeeze(-1) - torch.logsumexp(z, dim=-1)


@torch.no_grad()
def score_responses(
    model: Any,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    batch_size: int = 8,
    chunk_rows: int = 2048,
    pad_id: int = 0,
    temperature: float = 1.0,
) -> list[dict[str, torch.Tensor]]:
    """Teacher-forced per-token entropy and log-prob of each response under a HF causal LM, from
    ``softmax(logits / temperature)`` (the distribution that sampled the response; verl scales logits the same way).

    Each batch is right-padded (``pad_id``, attention_mask 0). Entry ``t`` of the returned
    ``"entropy"``/``"logprobs"`` (1-D fp32 CPU tensors of length ``len(response)``) comes from the
    distribution predicting response token ``t``, i.e. the logits at ``len(prompt) + t - 1``.
    For a model whose logits are its LM head on the decoder's last hidden states (``HEAD_ONLY``: Llama,
    Qwen, Mistral) only each response's rows are projected to the vocabulary, ``chunk_rows`` at a time: a
    batch of 16 CoTs of 16k tokens is 74 GiB of bf16 logits at R1's 152k vocabulary, a chunk 0.6 GiB
    (on CPU the scores are bit for bit those of the whole-batch projection). Other models project every
    position from the shortest prompt on where ``model.forward`` accepts ``logits_to_keep``. No KV cache
    is kept. Prompts must be non-empty. The model is not switched to eval mode here
    (``from_pretrained`` models already are).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the first response token must be predicted)")
    device = next(model.parameters()).device
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    head, decoder = head_and_decoder(model)
    empty = torch.empty(0, dtype=torch.float32)
    out: list[dict[str, torch.Tensor]] = []
    for b in range(0, len(prompts), batch_size):
        ps, rs = prompts[b : b + batch_size], responses[b : b + batch_size]
        if all(len(r) == 0 for r in rs):
            out.extend({"entropy": empty.clone(), "logprobs": empty.clone()} for _ in rs)
            continue
        seqs = [list(p) + list(r) for p, r in zip(ps, rs)]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if head is not None:  # hidden states only: each response's rows go through the head chunk by chunk
            states, offset = decoder(**inputs, use_cache=False).last_hidden_state, 0
        else:
            if "use_cache" in params:
                inputs["use_cache"] = False
            if "logits_to_keep" in params:  # int k keeps the last k positions; len(p)-1 is the first one needed
                inputs["logits_to_keep"] = width - (min(len(p) for p in ps) - 1)
            states = model(**inputs).logits
            offset = width - states.shape[1]  # absolute position of states[:, 0]
        for i, (p, r) in enumerate(zip(ps, rs)):
            if len(r) == 0:
                out.append({"entropy": empty.clone(), "logprobs": empty.clone()})
                continue
            start = len(p) - 1 - offset
            rows = states[i, start : start + len(r)]
            labels = torch.tensor(list(r), dtype=torch.long, device=rows.device)
            ent, lp = [], []
            for k in range(0, len(r), chunk_rows):
                z = rows[k : k + chunk_rows] if head is None else head(rows[k : k + chunk_rows])
                ent.append(token_entropy(z, chunk_rows, temperature))
                lp.append(token_logprobs(z, labels[k : k + chunk_rows], chunk_rows, temperature))
                del z
            out.append({"entropy": torch.cat(ent).cpu(), "logprobs": torch.cat(lp).cpu()})
        del states
    return out


# model types whose logits are exactly ``lm_head(model.model(...).last_hidden_state)``: no softcapping, scaling
# or other step between the decoder and the head (Gemma's softcap, Cohere's logit_scale, Granite's
# logits_scaling, MiniCPM's hidden-state scaling would be skipped)
HEAD_ONLY = ("llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")


def head_and_decoder(model: Any) -> tuple[Any, Any]:
    """``(lm_head, decoder)`` of a Hugging Face causal LM of a ``HEAD_ONLY`` type, else ``(None, None)``."""
    if getattr(getattr(model, "config", None), "model_type", None) not in HEAD_ONLY:
        return None, None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(head, torch.nn.Linear) or head.bias is not None or decoder is None:
        return None, None
    return head, decoder


@dataclass
class StepSpan:
    """One reasoning step: ``text`` is the raw split piece; ``[char_start, char_end)`` also covers the
    trailing delimiter (and skipped blank pieces); ``[tok_start, tok_end)`` are response token indices."""

    index: int
    text: str
    char_start: int
    char_end: int
    tok_start: int
    tok_end: int

    @property
    def n_tokens(self) -> int:
        return self.tok_end - self.tok_start


def segment_steps(
    text: str, offsets: Sequence[tuple[int, int]], delimiter: str = "\n\n"
) -> list[StepSpan]:
    """Split thinking ``text`` on ``delimiter`` into steps and map response tokens onto them.

    ``offsets[j]`` is the (start, end) char range of response token ``j`` in ``text`` (assumed
    non-decreasing); tokens starting at or beyond ``len(text)`` (``</think>``, the answer) are
    ignored. Blank pieces are skipped and their characters go to the preceding step. A token
    belongs to the step containing its start offset, so a merged ``".\\n\\n"`` token stays with the
    preceding step; tokens before the first step (e.g. a leading ``"\\n"``) go to the first step,
    so the spans tile all thinking tokens. If a step would get no token because the previous
    step's last token runs over its characters, that token is moved to it (when the previous step
    keeps at least one token).
    """
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    starts: list[int] = []
    pieces: list[str] = []
    pos = 0
    for piece in text.split(delimiter):
        if piece.strip():
            starts.append(pos)
            pieces.append(piece)
        pos += len(piece) + len(delimiter)
    if not starts:
        return []
    ends = starts[1:] + [len(text)]
    n_tok = 0
    while n_tok < len(offsets) and offsets[n_tok][0] < len(text):
        n_tok += 1
    owner = [max(0, bisect_right(starts, offsets[j][0]) - 1) for j in range(n_tok)]
    ranges: list[list[int]] = []
    nxt = 0
    for k in range(len(starts)):
        lo = nxt
        while nxt < n_tok and owner[nxt] <= k:
            nxt += 1
        ranges.append([lo, nxt])
    for k in range(1, len(starts)):
        prev = ranges[k - 1]
        if ranges[k][0] == ranges[k][1] and prev[1] - prev[0] >= 2 and offsets[prev[1] - 1][1] > starts[k]:
            prev[1] -= 1
            ranges[k][0] -= 1
    return [
        StepSpan(k, pieces[k], starts[k], ends[k], ranges[k][0], ranges[k][1]) for k in range(len(starts))
    ]


def step_entropies(
    entropy: torch.Tensor | Sequence[float], spans: Sequence[StepSpan], aggregate: str = "sum"
) -> list[float]:
    """Sum (``"sum"``) or mean (``"mean"``) token entropy per step; steps without tokens give 0.0."""
    if aggregate not in ("sum", "mean"):
        raise ValueError(f"unknown aggregate {aggregate!r}; expected 'sum' or 'mean'")
    ent = torch.as_tensor(entropy, dtype=torch.float64).reshape(-1)
    result = []
    for s in spans:
        if s.tok_start < 0 or s.tok_end > ent.numel() or s.tok_end < s.tok_start:
            raise ValueError(f"step {s.index} tokens [{s.tok_start}, {s.tok_end}) outside entropy of length {ent.numel()}")
        if s.tok_end == s.tok_start:
            result.append(0.0)
            continue
        part = ent[s.tok_start : s.tok_end]
        result.append(float(part.sum() if aggregate == "sum" else part.mean()))
    return result


def _as_logprob(v: Any) -> float:
    return float(getattr(v, "logprob", v))  # vLLM's Logprob objects or plain floats


def topk_entropy(topk_logprobs: Sequence[Mapping[int, Any] | Sequence[float]]) -> list[float]:
    """Cheap per-token entropy estimate from top-k log-probs (as returned by vLLM).

    Each position's top-k probabilities are kept and the leftover mass ``1 - sum p`` is treated as a
    single extra outcome. By the grouping rule this is a lower bound on the true entropy (exact if the
    top-k covers the support), up to errors in the reported log-probs. Dict values may be floats
    or objects with a ``.logprob`` attribute.
    """
    result = []
    for entry in topk_logprobs:
        values = entry.values() if isinstance(entry, Mapping) else entry
        h, mass = 0.0, 0.0
        for v in values:
            lp = _as_logprob(v)
            if lp == -math.inf:
                continue
            p = math.exp(lp)
            h -= p * lp
            mass += p
        rest = 1.0 - mass
        if rest > 1e-12:
            h -= rest * math.log(rest)
        result.append(max(h, 0.0))
    return result


def scored_steps(tokenizer, ids: list[int], entropy: list[float], delimiter: str, aggregate: str
                 ) -> tuple[list[str], list[float]]:
    """The thinking of a response given as token ids, cut into steps on ``delimiter``: (step texts, step entropies),
    a step's entropy being the ``aggregate`` (sum | mean) of its tokens' ``entropy`` (one value per id)."""
    _, _, spans, ents = scored_spans(tokenizer, ids, entropy, delimiter, aggregate)
    return [s.text.strip() for s in spans], ents


def scored_spans(tokenizer, ids: list[int], entropy: list[float], delimiter: str, aggregate: str
                 ) -> tuple[str, list[tuple[int, int]], list[StepSpan], list[float]]:
    """``scored_steps`` with what locates the steps in ``ids``: (thinking text, each id's character offsets, the
    steps' spans, their entropies)."""
    from stepentropy_rl.tokenizer import response_thinking

    _, offsets, thinking, _ = response_thinking(tokenizer, ids)
    spans = segment_steps(thinking, offsets, delimiter)
    return thinking, offsets, spans, step_entropies(entropy, spans, aggregate)
