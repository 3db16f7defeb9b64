"""Step pruning of chain-of-thought traces (arXiv 2508.03346) and `[SKIP]` token helpers.

A CoT is a list of reasoning steps, each with a score (normally its step entropy).
`prune_steps` removes ``floor(ratio * N)`` of them -- the lowest-scoring (``low``),
the highest-scoring (``high``) or a seeded random subset (``random``) -- and either
deletes them or replaces each with a placeholder such as ``[SKIP]``.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass

from stepentropy_rl.cot_format import SKIP_TOKEN
from stepentropy_rl.registry import Registry

# name -> choose(candidates, scores, k, seed) -> indices to prune; ``candidates`` are the unprotected step indices
STRATEGIES = Registry("pruning strategy")
register_strategy = STRATEGIES.register


def _ranked(candidates: list[int], scores, sign: float) -> list[int]:
    if any(math.isnan(float(scores[i])) for i in candidates):
        raise ValueError("scores contain NaN; cannot rank steps")
    return sorted(candidates, key=lambda i: (sign * float(scores[i]), i))


@register_strategy("low")
def lowest_first(candidates: list[int], scores, k: int, seed: int) -> list[int]:
    """The ``k`` lowest-scoring steps (ties: the earlier step). Paper 1's pruning."""
    return _ranked(candidates, scores, 1.0)[:k]


@register_strategy("high")
def highest_first(candidates: list[int], scores, k: int, seed: int) -> list[int]:
    """The ``k`` highest-scoring steps (ties: the earlier step). Paper 1's high-entropy baseline."""
    return _ranked(candidates, scores, -1.0)[:k]


@register_strategy("random")
def seeded_random(candidates: list[int], scores, k: int, seed: int) -> list[int]:
    """``random.Random(seed).sample(candidates, k)``. Paper 1's random baseline."""
    return random.Random(seed).sample(candidates, k)

# Guards floor(ratio * N) against float noise such as 0.29 * 100 = 28.999999999999996.
_FLOOR_EPS = 1e-9


def validate_pruning(strategy: str, ratio: float) -> None:
    """Raise ValueError unless `strategy` is in STRATEGIES and `ratio` is a real number in [0, 1]."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"pruning.strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or math.isnan(ratio)
        or not 0.0 <= ratio <= 1.0
    ):
        raise ValueError(f"pruning.ratio must be in [0, 1], got {ratio!r}")


@dataclass
class PrunedCoT:
    """Result of `prune_steps`.

    steps:    output steps (pruned ones replaced by the placeholder, or removed when deleting).
    pruned:   one flag per *original* step.
    n_pruned: number of pruned original steps.
    """

    steps: list[str]
    pruned: list[bool]
    n_pruned: int

    def text(self, delimiter: str = "\n\n") -> str:
        """The output steps joined by `delimiter`."""
        return delimiter.join(self.steps)


def _n_to_prune(ratio: float, n: int) -> int:
    return int(math.floor(ratio * n + _FLOOR_EPS))


def prune_steps(
    steps: list[str],
    scores: list[float],
    strategy: str,
    ratio: float,
    placeholder: str | None = SKIP_TOKEN,
    protect_first: bool = False,
    protect_last: bool = False,
    seed: int = 0,
    merge_runs: bool = False,
) -> PrunedCoT:
    """Prune ``floor(ratio * len(steps))`` steps (capped at the number of unprotected steps).

    ``low`` prunes the lowest scores first, ``high`` the highest; ties go to the lower
    step index. ``random`` draws ``random.Random(seed).sample`` over unprotected steps.
    `placeholder` None or "" deletes pruned steps; any other string replaces each
    pruned step: one placeholder per pruned step, or with ``merge_runs`` one per run of
    consecutive pruned steps (paper 1 does not merge; an option, off by default).

    >>> prune_steps(["a", "b", "c", "d"], [0, 1, 2, 3], "low", 0.5, merge_runs=True).steps
    ['[SKIP]', 'c', 'd']
    """
    validate_pruning(strategy, ratio)
    n = len(steps)
    if len(scores) != n:
        raise ValueError(f"got {len(scores)} scores for {n} steps; they must match")
    protected = set()
    if n and protect_first:
        protected.add(0)
    if n and protect_last:
        protected.add(n - 1)
    candidates = [i for i in range(n) if i not in protected]
    k = min(_n_to_prune(ratio, n), len(candidates))

    chosen_set = set(STRATEGIES[strategy](candidates, scores, k, seed))
    pruned = [i in chosen_set for i in range(n)]
    if placeholder:
        out = [placeholder if p else s for i, (s, p) in enumerate(zip(steps, pruned))
               if not (p and merge_runs and i and pruned[i - 1])]
    else:
        out = [s for s, p in zip(steps, pruned) if not p]
    return PrunedCoT(steps=out, pruned=pruned, n_pruned=len(chosen_set))


def pruned_ids(tokenizer, ids: list[int], offsets: list[tuple[int, int]], thinking: str, spans: list,
               pruned: list[bool], placeholder: list[int] | None, merge_runs: bool = False) -> list[int]:
    """The thinking of the CoT ``ids`` with its ``pruned`` steps (one flag per ``entropy.segment_steps`` span) taken
    out, built from the CoT's own ids: a kept step is its tokens as the model wrote them; a pruned one is the
    ``placeholder`` ids and then the whitespace that ended the step (its own tokens where they hold only whitespace,
    else that text encoded), or nothing where ``placeholder`` is None (deletion); with ``merge_runs`` a run of
    pruned steps gets one placeholder. Whatever step comes last ends in the last step's closing whitespace.

    Encoding the pruned thinking as text instead tokenizes the same characters differently beside an added token:
    the tiny reasoner's tokenizer merges the "\n\n" before ``[SKIP]`` into one token that its base never writes.
    """
    from stepentropy_rl.tokenizer import encode

    def split(s) -> tuple[int, int, str, bool]:
        """(first id reaching into the closing whitespace, where the step's content ends, that whitespace, whether an
        id starts where it does)."""
        end = s.char_start + len(s.text.rstrip())
        j = s.tok_start
        while j < s.tok_end and offsets[j][1] <= end:
            j += 1
        return j, end, thinking[end:s.char_end], j == s.tok_end or offsets[j][0] >= end

    def tail(s) -> list[int]:
        j, _, text, aligned = split(s)
        return list(ids[j:s.tok_end]) if aligned else encode(tokenizer, text)

    def closed_as_last(s) -> list[int]:
        j, end, _, aligned = split(s)
        lj, _, last_text, last_aligned = split(spans[-1])
        if aligned and last_aligned:
            return list(ids[s.tok_start:j]) + list(ids[lj:spans[-1].tok_end])
        start = offsets[j][0] if j < s.tok_end else end
        return list(ids[s.tok_start:j]) + encode(tokenizer, thinking[start:end] + last_text)

    units = [(s, not cut) for k, (s, cut) in enumerate(zip(spans, pruned))
             if not cut or (placeholder is not None and not (merge_runs and k + 1 < len(spans) and pruned[k + 1]))]
    out: list[int] = []
    for n, (s, kept) in enumerate(units):
        last = n == len(units) - 1 and s is not spans[-1]
        if kept:
            out += closed_as_last(s) if last else list(ids[s.tok_start:s.tok_end])
        else:
            out += list(placeholder) + tail(spans[-1] if last else s)
    return out


def answer_prefixer(tokenizer, prompt_ids: list[int], ids: list[int], delimiter: str, placeholder: list[int] | None,
                    merge_runs: bool = False):
    """For the CoT ``ids``, a function of one pruned flag per step (``entropy.segment_steps`` on its thinking) that
    gives the prompt, the thinking with those steps taken out (:func:`pruned_ids`) and ``</think>``: what the model
    answers after, in the ids it wrote. The text encoded again tokenizes otherwise beside an added token (the "\n\n"
    after ``[SKIP]`` on a checkpoint that has it) and before ``</think>`` where nothing is kept. None where the
    thinking does not end on a token of its own just before its ``</think>`` token (cut at the token budget, or the
    tag written in pieces): the caller encodes the text instead (``cot_format.answer_prefix``)."""
    from stepentropy_rl.cot_format import THINK_CLOSE
    from stepentropy_rl.entropy import segment_steps
    from stepentropy_rl.tokenizer import encode, response_thinking

    _, offsets, thinking, closed = response_thinking(tokenizer, list(ids))
    spans = segment_steps(thinking, offsets, delimiter)
    close = encode(tokenizer, THINK_CLOSE)
    n_think = spans[-1].tok_end if spans else 0
    if not closed or list(ids[n_think:n_think + len(close)]) != close or (
            n_think and offsets[n_think - 1][1] > len(thinking)):
        return None

    def prefix(pruned: list[bool]) -> list[int]:
        if len(pruned) != len(spans):
            raise ValueError(f"{len(pruned)} pruned flags for {len(spans)} steps")
        return [*prompt_ids, *pruned_ids(tokenizer, ids, offsets, thinking, spans, pruned, placeholder, merge_runs),
                *close]
    return prefix


def add_skip_token(tokenizer, model=None, token: str = SKIP_TOKEN, pad_to_multiple_of: int = 64) -> int:
    """Register `token` as a normal (non-special) added token and return its id.

    It stays visible in ``decode(..., skip_special_tokens=True)``. Idempotent. When a
    `model` is given, its embeddings grow (to a multiple of `pad_to_multiple_of`) only if
    they have fewer rows than ``len(tokenizer)`` -- spare rows are never dropped -- and
    ``config.vocab_size`` is set to the embedding row count. Tied lm_heads are re-tied.
    A new token's row, input and output, starts at the mean of the rows of the tokens
    the tokenizer had: grown rows get it from ``resize_token_embeddings``, and a spare row
    (R1-Distill-Qwen has 152064 rows for 151665 tokens) gets it here, since no id ever
    trained it (as an input; as an output it was only pushed down).
    """
    from tokenizers import AddedToken

    known = len(tokenizer)
    new = token not in tokenizer.get_added_vocab()
    if new:
        tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)])
    token_id = tokenizer.convert_tokens_to_ids(token)
    added = tokenizer.added_tokens_decoder.get(token_id)
    if added is not None and added.special:
        raise ValueError(f"{token!r} is registered as a special token; skip_special_tokens would strip it")

    if model is not None:
        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
        elif new:
            _mean_init(model, token_id, known)
        rows = model.get_input_embeddings().weight.shape[0]
        model.config.get_text_config().vocab_size = rows
        if hasattr(model.config, "vocab_size"):
            model.config.vocab_size = rows
        if hasattr(model, "vocab_size"):
            model.vocab_size = rows
        model.tie_weights()
        out = model.get_output_embeddings()
        if out is not None and out.weight.shape[0] != rows:
            raise RuntimeError(f"lm_head has {out.weight.shape[0]} rows but the input embedding has {rows}")
    return token_id


def _mean_init(model, row: int, known: int) -> None:
    """Input and output embedding ``row`` set to the mean of rows ``[0, known)`` (a tied head shares the input's)."""
    import torch

    with torch.no_grad():
        for emb in {id(e): e for e in (model.get_input_embeddings(), model.get_output_embeddings())
                    if e is not None}.values():
            emb.weight[row] = emb.weight[:known].mean(dim=0)


def count_token(ids, token_id: int) -> int:
    """Number of occurrences of `token_id` in a 1-D sequence of token ids (list or tensor)."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return sum(1 for i in ids if int(i) == token_id)
