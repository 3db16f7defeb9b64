"""What a set of CoTs is made of, beyond its answers: how much of the thinking is redundant, how many CoTs are right
at every step, and the sampling error of an accuracy. Pure functions; ``driver/evaluate.py`` applies them."""
from __future__ import annotations

import math
from typing import Callable

from stepentropy_rl.entropy import segment_steps
from stepentropy_rl.tokenizer import response_thinking


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent samples: sqrt(p (1 - p) / n).

    >>> round(binomial_stderr(0.98, 200), 4), binomial_stderr(1.0, 10), binomial_stderr(0.5, 0)
    (0.0099, 0.0, nan)
    """
    return math.sqrt(p * (1 - p) / n) if n > 0 else math.nan


def paired_difference(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Mean of ``a_i - b_i`` over the same problems (two strategies' verdicts on one CoT each) and its paired standard
    error ``sd(d) / sqrt(n)``: the sampling error of the difference of two accuracies measured on the same samples,
    smaller than either accuracy's own error when the verdicts agree on most problems.

    >>> paired_difference([True, True, True, False], [True, False, True, False])
    (0.25, 0.25)
    >>> paired_difference([True] * 8, [True] * 8), paired_difference([], [])
    ((0.0, 0.0), (nan, nan))
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return math.nan, math.nan
    d = [int(x) - int(y) for x, y in zip(a, b)]
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


PAPER_ORDER = ("low", "random", "high")  # paper 1, Fig. 1a: accuracy after pruning, best first
BEYOND_ERROR_P = 0.05  # two-sided, the exact sign test on the problems only one strategy got right


def sign_test_p(b: int, c: int) -> float:
    """Two-sided exact sign test (McNemar's, exact) of ``b`` problems only the first strategy got right against ``c``
    only the second did: p = min(1, 2 P(X >= max(b, c))), X ~ Binomial(b + c, 1/2). Exact for the few discordant
    problems where ``difference / paired error >= 2`` is not (4 against 0 gives z = 2.0 but p = 0.125).

    >>> sign_test_p(4, 0), sign_test_p(6, 0), sign_test_p(0, 0)
    (0.125, 0.03125, 1.0)
    """
    n, k = b + c, max(b, c)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k, n + 1)) / 2 ** n)


def compare_strategies(rows: list[dict]) -> list[dict]:
    """The study's strategies against each other on the same problems. ``rows``: one verdict per problem, strategy
    and ratio (``{id, strategy, ratio, correct}``). Per ratio above 0, each pair of the strategies there, in the
    paper's order (low - random, random - high, then low - high): the accuracy difference over the problems both
    answered, its paired standard error (``paired_difference``), z (None without spread), how many problems only
    one of the two got right, their sign test's p (``sign_test_p``), and whether the first is ahead beyond the error
    (p < ``BEYOND_ERROR_P``). Strategies added with ``register_strategy`` follow the paper's three."""
    verdict: dict = {}
    for r in rows:
        verdict.setdefault((r["strategy"], float(r["ratio"])), {})[r["id"]] = bool(r["correct"])
    names = [s for s in PAPER_ORDER if any(k[0] == s for k in verdict)]
    names += sorted({k[0] for k in verdict} - set(names))
    pairs = sorted(((a, b) for i, a in enumerate(names) for b in names[i + 1:]),
                   key=lambda ab: names.index(ab[1]) - names.index(ab[0]))  # neighbours first
    out = []
    for ratio in sorted({k[1] for k in verdict if k[1] > 0}):
        for a, b in pairs:
            va, vb = verdict.get((a, ratio)), verdict.get((b, ratio))
            ids = [i for i in va if i in vb] if va and vb else []
            if not ids:
                continue
            xa, xb = [va[i] for i in ids], [vb[i] for i in ids]
            diff, err = paired_difference(xa, xb)
            z = diff / err if err > 0 else None  # None: no spread (every problem differs alike, or none does)
            only_a, only_b = sum(x and not y for x, y in zip(xa, xb)), sum(y and not x for x, y in zip(xa, xb))
            p = sign_test_p(only_a, only_b)
            out.append({"ratio": ratio, "better": a, "worse": b, "difference": diff, "stderr": err, "z": z,
                        "sign_test_p": p, "ahead_beyond_error": diff > 0 and p < BEYOND_ERROR_P,
                        "only_better_right": only_a, "only_worse_right": only_b, "n": len(ids)})
    return out


def auroc(scores: list[float], redundant: list[bool]) -> float:
    """AUROC of ``-score`` for finding redundant steps: P(s_r < s_e) + P(s_r = s_e) / 2 over pairs of a redundant
    step r and an essential step e (1.0: every redundant step has lower entropy); nan if one class is missing; a score
    that is nan is a ValueError (``np.unique`` would rank it as the lowest entropy of all).
    The Mann-Whitney U statistic on average ranks, O(n log n). Ours rather than scikit-learn's ``roc_auc_score``:
    with scikit-learn installed, transformers imports it in every process (2 s each on 2 cores, measured).

    >>> auroc([0.1, 0.5, 0.5, 2.0], [True, True, False, False]), auroc([1.0], [True])
    (0.875, nan)
    """
    import numpy as np

    x, pos = -np.asarray(scores, dtype=float), np.asarray(redundant, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if np.isnan(x).any():
        raise ValueError(f"auroc: {int(np.isnan(x).sum())} of the {len(x)} step scores are nan (entropies of a model "
                         "whose logits are not numbers?)")
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties share their average rank
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def step_token_labels(tokenizer, ids: list[int], labeler: Callable[[str], tuple[str, str]]) -> list[tuple[str, int]]:
    """Each line of a response's thinking, given as ids: ``(label, tokens)``, the label from ``labeler(line)``
    (e.g. ``tasks.basket.label_step``: essential | redundant | unknown) and the tokens the line holds (a blank line's
    go to the line before). Each step of a labelled task is one line: read by ``\\n\\n`` pieces, a model that joins
    its steps with one newline would have its redundant lines labelled by the piece's first."""
    _, offsets, thinking, _ = response_thinking(tokenizer, ids)
    return [(labeler(s.text)[0], s.n_tokens) for s in segment_steps(thinking, offsets, "\n")]


def redundant_fraction(steps: list[list[tuple[str, int]]]) -> float | None:
    """Share of all thinking tokens (over every CoT) that sit in steps labelled redundant; None without tokens (a
    NaN would reach report.json as a bare ``NaN``, which strict JSON readers refuse and which never equals itself).

    >>> redundant_fraction([[("essential", 6), ("redundant", 4)], [("redundant", 10)]])
    0.7
    >>> redundant_fraction([[], []]) is None  # every CoT closed its thinking at once
    True
    """
    total = sum(n for cot in steps for _, n in cot)
    return sum(n for cot in steps for label, n in cot if label == "redundant") / total if total else None
