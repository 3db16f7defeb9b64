"""GRPO reward terms for step-entropy compression (arXiv 2508.03346) and entropy-guided compression (arXiv 2511.14258).

Each term is a small pure function ``term(s: Sample, **params) -> float``; `RewardFn` composes weighted terms::

    total = prod_{g in gates} w_g * g(s)  *  sum_{t not a gate} w_t * t(s)

so a gate (``length_clip``: no answer, or a thinking longer than L tokens) zeroes the whole reward.
"""
from __future__ import annotations

import inspect
import logging
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from stepentropy_rl.cot_format import SKIP_TOKEN, THINK_OPEN, answer_text, boxed_answer, split_thinking
from stepentropy_rl.registry import Registry
from stepentropy_rl.typed import ConfigError

log = logging.getLogger(__name__)


class CustomRewardError(ConfigError):
    """A user's ``reward.custom`` scorer that raised on each of its first answered samples: broken, not the samples.
    A ``ConfigError`` (``typed``), so the run stops with one line naming the key, from the reward actor too."""


@dataclass(frozen=True)
class Sample:
    """One graded response. Build it with `make_sample`; the defaults only make hand-written examples short."""

    response_ids: tuple[int, ...] = ()
    text: str = ""  # decoded WITHOUT skipping special tokens
    correct: bool = False  # graded elsewhere; a grader timeout counts as False
    n_skip: int = 0  # occurrences of the [SKIP] id in the thinking (the ids before </think>)
    n_steps: int = 0  # real (non-empty, not [SKIP]-only) thinking steps
    length: int = 0  # len(response_ids)
    answered: bool = False  # graded right, or closed </think> with a last \boxed{ after it that closes (a wrong
    # answer in the built-in graders' format); a grader that reads unboxed answers, or grade_span=all, answers unboxed
    answer_pos: int | None = None  # when answered: the index of </think> in the ids (the thinking's tokens)
    closed: bool = False  # the thinking closed (</think> in the text)
    ground_truth: str = ""  # the problem's answer; with data_source and extra_info, what verl's scorers take
    data_source: str = ""
    extra_info: dict = field(default_factory=dict, hash=False, compare=False)


def make_sample(response_ids, text: str, correct: bool, skip_id: int, delimiter: str = "\n\n",
                close_id: int | None = None, ground_truth: str = "", data_source: str = "",
                extra_info: dict | None = None) -> Sample:
    """Build a `Sample` from a response's ids and text (decoded WITHOUT skipping special tokens).

    Counts come from the ids: ``[SKIP]`` is ``skip_id`` (so a text decoded with ``skip_special_tokens=True`` still
    counts its skips), and the answer starts after the ``</think>`` token ``close_id``: ``answer_pos`` is the
    number of thinking tokens. If the ids lack ``close_id`` (the tag was sampled in pieces, or no id was given)
    the whole response counts as thinking. Only the thinking's skips count: a ``[SKIP]`` written after
    ``</think>`` skips no step, and counting it would pay the skip-ratio reward for padding the answer; so a tag
    sampled in pieces (the ids then hold no ``close_id``) caps the count at the skips before the tag in the text.

    >>> s = make_sample([5, 9, 5, 7, 8, 5], "[SKIP]\\n\\na\\n\\n[SKIP]\\n\\nb</think>\\\\boxed{3}[SKIP]", True, 5,
    ...                 close_id=7)
    >>> s.n_skip, s.n_steps, s.answered, s.answer_pos
    (2, 2, True, 3)
    """
    ids = tuple(int(i) for i in response_ids)
    thinking, closed = split_thinking(text)
    if thinking.lstrip().startswith(THINK_OPEN):
        thinking = thinking.lstrip()[len(THINK_OPEN):]
    n_steps = sum(1 for piece in thinking.split(delimiter) if piece.replace(SKIP_TOKEN, "").strip())
    # an answer: a right one however written (a user's or the math grader reads "The answer is 4"; grade_span=all reads
    # a box in an unclosed thinking), or a wrong one in the built-in graders' format (the last \boxed{ after </think>)
    answered = bool(correct) or (closed and boxed_answer(answer_text(text)) is not None)
    think_end = ids.index(int(close_id)) if close_id is not None and int(close_id) in ids else len(ids)
    answer_pos = think_end if answered else None
    n_skip = ids[:think_end].count(int(skip_id))
    if closed and SKIP_TOKEN in text:  # a text that kept its skips: none after the text's </think> counts
        n_skip = min(n_skip, thinking.count(SKIP_TOKEN))
    return Sample(response_ids=ids, text=text, correct=bool(correct), n_skip=n_skip,
                  n_steps=n_steps, length=len(ids), answered=answered, answer_pos=answer_pos, closed=closed,
                  ground_truth=str(ground_truth), data_source=str(data_source or ""), extra_info=dict(extra_info or {}))


# name -> term(s: Sample, **params) -> float; the reserved names are the columns the reward service adds beside them
TERMS = Registry("reward term", reserved=("total", "correct", "length", "n_skip", "answered"))
register_term = TERMS.register


def _real(name: str, value, lo=-math.inf, hi=math.inf, open_lo=False, open_hi=False) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless it is a finite real in the given interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < lo or value > hi or (open_lo and value == lo) or (open_hi and value == hi):
        interval = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return float(value)


@register_term("correctness")
def correctness(s: Sample, *, value: float = 2.0) -> float:
    r"""$r = v \cdot 1[\mathrm{correct}]$.

    >>> correctness(Sample(correct=True)), correctness(Sample(correct=False))
    (2.0, 0.0)
    """
    return float(value) if s.correct else 0.0


@register_term("skip_ratio")
def skip_ratio(s: Sample, *, high: float = 0.8, high_reward: float = 1.0, low: float = 0.5,
               low_reward: float = 0.5, graded: bool = False) -> float:
    r"""$\rho = n_{skip}/(n_{steps}+n_{skip})$ (0 if both 0); $r = r_{hi}$ if $\rho \ge hi$, $r_{lo}$ if $\rho \ge lo$, else 0
    (paper 1's tiers). ``graded``: $r = r_{hi} \min(\rho / hi, 1)$, which rewards every extra skip (an option: with
    one ``[SKIP]`` per gap the tiers give every sample of a group the same 0.5). Paper 1's code divides by the
    thinking's count of blank lines plus $n_{skip}$: the same share where each ``[SKIP]`` is a step of its own. As in
    that code, a thinking of ``[SKIP]`` alone scores $\rho = 1$ (with one ``[SKIP]`` per gap the only way to the top
    tier), and a response that never closes its thinking is scored on all of it; correctness pays neither.

    >>> skip_ratio(Sample(n_skip=8, n_steps=2)), skip_ratio(Sample(n_skip=1, n_steps=1)), skip_ratio(Sample())
    (1.0, 0.5, 0.0)
    >>> skip_ratio(Sample(n_skip=2, n_steps=3), graded=True), skip_ratio(Sample(n_skip=9, n_steps=1), graded=True)
    (0.5, 1.0)
    """
    if not _real("skip_ratio.low", low, 0, 1) <= _real("skip_ratio.high", high, 0, 1):
        raise ValueError(f"skip_ratio.low must be <= skip_ratio.high, got low={low}, high={high}")
    if not isinstance(graded, bool):
        raise ValueError(f"skip_ratio.graded must be true or false, got {graded!r}")
    total = s.n_steps + s.n_skip
    ratio = s.n_skip / total if total else 0.0
    if graded:
        return float(high_reward) * min(ratio / high, 1.0) if high > 0 else float(high_reward)
    return float(high_reward) if ratio >= high else float(low_reward) if ratio >= low else 0.0


@register_term("skip_count")
def skip_count(s: Sample, *, limit: int = 100, penalty: float = -2.0) -> float:
    r"""$r = p \cdot 1[n_{skip} > \mathrm{limit}]$.

    >>> skip_count(Sample(n_skip=100)), skip_count(Sample(n_skip=101))
    (0.0, -2.0)
    """
    return float(penalty) if s.n_skip > limit else 0.0


@register_term("length_threshold")
def length_threshold(s: Sample, *, limit: int = 3500, penalty: float = -1.0) -> float:
    r"""$r = p \cdot 1[|y| > \mathrm{limit}]$.

    >>> length_threshold(Sample(length=3500)), length_threshold(Sample(length=3501))
    (0.0, -1.0)
    """
    return float(penalty) if s.length > limit else 0.0


@register_term("exp_length")
def exp_length(s: Sample, *, L: float, r: float = 0.2, scale: float = 1.0, only_correct: bool = True) -> float:
    r"""$f(x) = c\,e^{-\lambda x}$, $\lambda = -\ln(r)/L$, $x = |y|$: $f(0) = c$, $f(L) = c\,r$; times $1[\mathrm{correct}]$ if only_correct.

    >>> exp_length(Sample(length=0, correct=True), L=100), round(exp_length(Sample(length=100, correct=True), L=100), 6)
    (1.0, 0.2)
    >>> exp_length(Sample(length=0, correct=False), L=100)
    0.0
    """
    r = _real("exp_length.r", r, 0, 1, open_lo=True, open_hi=True)
    lam = -math.log(r) / _real("exp_length.L", L, 0, open_lo=True)
    if only_correct and not s.correct:
        return 0.0
    return float(scale) * math.exp(-lam * s.length)


@register_term("length_clip")
def length_clip(s: Sample, *, L: int) -> float:
    r"""Gate $g = 1[\mathrm{answered} \wedge n_{think} \le L]$: the thinking closes within L tokens and an
    answer follows (``Sample.answered``; a right answer whose thinking never closed counts all its tokens as thinking).

    >>> length_clip(Sample(answer_pos=10), L=10), length_clip(Sample(answer_pos=11), L=10), length_clip(Sample(), L=10)
    (1.0, 0.0, 0.0)
    """
    _real("length_clip.L", L, 0, open_lo=True)
    return 0.0 if s.answer_pos is None or s.answer_pos > L else 1.0


@register_term("format_reward")
def format_reward(s: Sample, *, value: float = 0.5) -> float:
    r"""$r = v \cdot 1[\mathrm{closed} \wedge \mathrm{answered}]$: ``</think>`` closed and a ``\\boxed{}`` after it,
    or a right answer however written after it (``Sample.answered``); a right answer in a thinking that never closed
    (``data.grade_span=all``) is no format.

    >>> format_reward(Sample(answered=True, closed=True)), format_reward(Sample(answered=True)), format_reward(Sample())
    (0.5, 0.0, 0.0)
    """
    return float(value) if s.answered and s.closed else 0.0


@register_term("custom")
def custom(s: Sample, *, path: str, name: str = "compute_score") -> float:
    r"""$r = \mathrm{name}(\mathrm{data\_source}, y, \mathrm{ground\_truth}, \mathrm{extra\_info})$: a user's scorer with
    verl's ``compute_score`` signature, from the file ``path`` (``reward.custom``); a dict result gives its ``score``.
    Only loaded, not called, when the config is checked."""
    from stepentropy_rl.hooks import load_function

    from stepentropy_rl.tasks.grading import FIRST_CALLS, FirstCalls, cannot_take

    fn = load_function(path, name, "reward.custom")
    if s is _PROBE:  # the config check: the file, the function and its signature; the code runs on real samples only
        why = cannot_take(fn, "source", "solution", "truth", {})
        if why:
            raise ValueError(f"reward.custom: {name}() cannot take (data_source, solution_str, ground_truth, "
                             f"extra_info): {why}")
        return 0.0
    first = _CUSTOM_CALLS.setdefault((path, name), FirstCalls())  # answered samples count: garbage may fail
    try:
        score = _score_of(fn(s.data_source, s.text, s.ground_truth, s.extra_info), f"{name}() returned")
    except Exception as e:
        if first.raised(s.answered):
            raise CustomRewardError(f"reward.custom: {name}() raised on each of the first {FIRST_CALLS} answered "
                                    f"samples (last: {type(e).__name__}: {e}); it takes (data_source, solution_str, "
                                    f"ground_truth, extra_info)") from e
        if first.failed == 1:
            log.warning("reward.custom: %s() raised (%s: %s); such samples score 0", name, type(e).__name__, e)
        return 0.0
    first.ok(s.answered)
    return score


def _score_of(result, what: str) -> float:
    """A user scorer's result as verl reads it: a number or a bool (``float``), or a dict's ``score``; anything else,
    or a value that is not finite, is a ValueError (the sample then scores 0, as when the scorer raises)."""
    score = result["score"] if isinstance(result, dict) and "score" in result else result
    if isinstance(score, (bool, np.bool_)):
        score = float(score)
    return _real(what, score)


_CUSTOM_CALLS: dict = {}  # (path, name) -> its FirstCalls


@dataclass
class TermSpec:
    name: str
    weight: float = 1.0
    params: dict = field(default_factory=dict)
    gate: bool = False


_PROBE = Sample()


class RewardFn:
    """Weighted sum of terms times the product of gates; ``__call__`` returns each weighted term plus ``total``.

    >>> fn = RewardFn([TermSpec("length_clip", params={"L": 5}, gate=True), TermSpec("correctness")])
    >>> fn(Sample(correct=True, answer_pos=3)), fn(Sample(correct=True))["total"]
    ({'length_clip': 1.0, 'correctness': 2.0, 'total': 2.0}, 0.0)
    """

    def __init__(self, terms: list[TermSpec], path: str = "reward.terms"):
        self.terms = list(terms)
        seen = set()
        for i, t in enumerate(self.terms):
            where = f"{path}[{i}]"
            if t.name not in TERMS:
                raise ValueError(f"{where}.name: unknown term {t.name!r}; known: {', '.join(sorted(TERMS))}")
            if t.name in seen:
                raise ValueError(f"{where}.name: duplicate term {t.name!r}")
            seen.add(t.name)
            _real(f"{where}.weight", t.weight)
            if not isinstance(t.gate, bool):
                raise ValueError(f"{where}.gate must be a bool, got {t.gate!r}")
            fn = TERMS[t.name]
            try:
                signature = inspect.signature(fn)
                signature.bind(_PROBE, **t.params)
                for key, p in signature.parameters.items():  # numbers the probe's branch would not reach
                    if key in t.params and p.annotation in ("float", "int", float, int):
                        _real(f"{t.name}.{key}", t.params[key], lo=0 if key in ("limit", "L") else -math.inf)
                fn(_PROBE, **t.params)  # surfaces parameter ValueErrors now, not mid-training
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}.params: {e}") from None

    def __call__(self, s: Sample) -> dict[str, float]:
        out, gate, total = {}, 1.0, 0.0
        for t in self.terms:
            v = float(t.weight) * TERMS[t.name](s, **t.params)
            out[t.name] = v
            if t.gate:
                gate *= v
            else:
                total += v
        out["total"] = gate * total
        return out


# the parameter that sets a term's size (its value when it fires): GDPO's per-group normalisation divides it out
MAGNITUDE = {"correctness": "value", "format_reward": "value", "exp_length": "scale", "skip_count": "penalty",
             "length_threshold": "penalty", "skip_ratio": "high_reward"}


def magnitude(t: TermSpec) -> float:
    """|the term's size parameter| (``MAGNITUDE``; its default when the config leaves it out), 1 for other terms.

    >>> magnitude(TermSpec("format_reward", params={"value": 0.2})), magnitude(TermSpec("correctness"))
    (0.2, 2.0)
    """
    import inspect

    key = MAGNITUDE.get(t.name)
    if key is None:
        return 1.0
    default = inspect.signature(TERMS[t.name]).parameters[key].default
    return abs(float(t.params.get(key, default)))


def gdpo_components(terms: list[TermSpec], scores: dict) -> dict:
    """A stage's non-gate terms as GDPO normalises them (``algorithms.gdpo_advantages``): term -> ``(w_k * m_k, g *
    t_k / m_k)``, its weight times its size ``m_k`` (``magnitude``; 1 when 0) and its unweighted per-sample values in
    units of that size, times the product of the stage's gates ``g``; a gated-off sample scores 0 in every term. The
    normalisation within each group divides a term's size out, so the size goes into the weight: a format reward of
    0.2 counts a fifth of a correctness of 1.0 under GDPO as under GRPO's sum, with or without the division by the
    group's std (``norm_adv_by_std``). ``scores``: the reward service's columns (each term weighted, as ``RewardFn``
    returns them).

    >>> import torch
    >>> terms = [TermSpec("length_clip", gate=True), TermSpec("correctness", 2.0), TermSpec("exp_length")]
    >>> got = gdpo_components(terms, {"length_clip": torch.tensor([1.0, 0.0]), "correctness": torch.tensor([4.0, 4.0]),
    ...                                "exp_length": torch.tensor([0.5, 0.5])})
    >>> {k: (w, v.tolist()) for k, (w, v) in got.items()}
    {'correctness': (4.0, [1.0, 0.0]), 'exp_length': (1.0, [0.5, 0.0])}
    """
    gate = 1.0
    for t in terms:
        if t.gate:
            gate = gate * scores[t.name]
    out = {}
    for t in terms:
        if not t.gate and t.weight != 0:
            size = magnitude(t) or 1.0
            out[t.name] = (float(t.weight) * size, gate * scores[t.name] / (float(t.weight) * size))
    return out


def from_config(cfg_terms, path: str = "reward.terms") -> RewardFn:
    """A `RewardFn` from a list of ``{name, weight, params, gate}`` dicts (plain or OmegaConf, interpolations resolved)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg_terms):
        cfg_terms = OmegaConf.to_container(cfg_terms, resolve=True)
    if not isinstance(cfg_terms, (list, tuple)):
        raise ValueError(f"{path} must be a list of terms, got {type(cfg_terms).__name__}")
    specs = []
    for i, d in enumerate(cfg_terms):
        if not isinstance(d, dict) or "name" not in d:
            raise ValueError(f"{path}[{i}] must be a mapping with a 'name', got {d!r}")
        extra = set(d) - {"name", "weight", "params", "gate"}
        if extra:
            raise ValueError(f"{path}[{i}]: unknown key(s) {sorted(extra)}; allowed: name, weight, params, gate")
        params = d.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{path}[{i}].params must be a mapping, got {params!r}")
        specs.append(TermSpec(d["name"], d.get("weight", 1.0), dict(params), d.get("gate", False)))
    return RewardFn(specs, path=path)


def pays_wrong_answers(fn: RewardFn) -> bool:
    """Whether ``fn``'s built-in terms give a wrong answer a positive total (probed on wrong responses with and
    without an answer, skips and length; a user's ``custom`` term is not called). Under the ``absolute`` advantage
    ``A = beta * max(R, 0)`` such a reward reinforces wrong answers."""
    built_in = RewardFn([t for t in fn.terms if t.name != "custom"])
    probes = [Sample(correct=False, answered=answered, closed=answered, answer_pos=1 if answered else None,
                     length=length, n_skip=skips, n_steps=1)
              for answered in (True, False) for skips in (0, 1, 4, 10**6) for length in (2, 10**6)]
    return any(built_in(s)["total"] > 0 for s in probes)


def stage_rewards(reward_cfg) -> dict[str, RewardFn]:
    """One `RewardFn` per stage of a ``reward`` config group (``stages: {name: [terms]}``). ``custom: {path, name,
    weight}`` adds the term ``custom`` (a user's verl-style scorer) to every stage when its ``path`` is set."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(reward_cfg):
        reward_cfg = OmegaConf.to_container(reward_cfg, resolve=True)
    extra, c = [], reward_cfg.get("custom")
    if c is not None and (not isinstance(c, dict) or set(c) - {"path", "name", "weight"}):
        raise ValueError(f"reward.custom must be {{path, name, weight}} (name and weight optional), got {c!r}")
    if c and c.get("path"):  # path null: no custom term
        extra = [{"name": "custom", "weight": c.get("weight", 1.0),
                  "params": {"path": str(c["path"]), "name": c.get("name") or "compute_score"}}]
    return {name: from_config(list(reward_cfg["stages"][name]) + extra, path=f"reward.stages.{name}")
            for name in reward_cfg["stages"]}
