"""What the tiny reasoner learned, probed teacher-forced: which person each move names, by the move's place in the
CoT, and whether an attention head reads a listed quantity's person, the token before it, where the one-hop lookup
(person, then the quantity after it in the problem) needs one (docs/measurements_2026_12_06_fp32_head.md, "What the
drop learns")."""
from __future__ import annotations

import torch

from stepentropy_rl.tasks.basket import listed_pairs, name_span, step_spans
from stepentropy_rl.tokenizer import prompt_text


def _token_at(offsets, char: int) -> int:
    return next(k for k, (s, e) in enumerate(offsets) if s <= char < e)


def _move_hits(problem, offsets, hit) -> list[bool]:
    """Per move of ``problem``, in order, whether the model predicts the first token of the move's person."""
    return [bool(hit[_token_at(offsets, start + span[0])]) for start, _, step in step_spans(problem)
            if step.label == "essential" and (span := name_span(step.text)) is not None]


def name_shares(forced) -> list[float]:
    """Per move (first, second, ...), the share of ``forced`` (``bootstrap.teacher_forced``: problem, offsets, hits)
    whose move names the person the model predicts (argmax after the tokens before it)."""
    hits, total = [], []
    for record in forced:
        for i, named in enumerate(_move_hits(*record)):
            if i == len(total):
                hits.append(0)
                total.append(0)
            hits[i] += named
            total[i] += 1
    return [h / t for h, t in zip(hits, total)]


def last_name_share(forced) -> float | None:
    """The share of ``forced``'s problems whose last move names the person the model predicts: the only person left
    there, whatever the problem's size (``name_shares``' last place holds only the problems with the most people;
    with two or three people, a two-person problem's last move sits in the second place among middle moves). None
    without a move."""
    last = [moves[-1] for moves in (_move_hits(*record) for record in forced) if moves]
    return sum(last) / len(last) if last else None


def chance_name_shares(problems) -> list[float]:
    """What ``name_shares`` scores for a model that names, at random, a person not yet handled: 1 / (people left)."""
    shares = [[] for _ in range(max(len(listed_pairs(p.prompt)) for p in problems))]
    for p in problems:
        n = len(listed_pairs(p.prompt))
        for i in range(n):
            shares[i].append(1 / (n - i))
    return [sum(s) / len(s) for s in shares if s]


def back_attention(attentions, pairs) -> torch.Tensor:
    """[layers, heads]: the mean attention that each listed quantity's token pays to its person's token, over
    ``pairs`` of (person's token, quantity's token); ``attentions`` as a model returns them ([1, heads, T, T] each)."""
    att = torch.stack([a[0] for a in attentions])  # [layers, heads, T, T]
    names, quantities = (torch.tensor(x) for x in zip(*pairs))
    return att[:, :, quantities, names].mean(-1)


@torch.no_grad()
def person_attention(model, tok, problems) -> list[list[float]]:
    """``back_attention`` over ``problems``' prompts as the model reads them (in its chat template), per layer and
    head."""
    head, tail = prompt_text(tok, "\x00").split("\x00")
    was = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the one that returns attention weights
    try:
        total, n = 0.0, 0
        for p in problems:
            enc = tok(head + p.prompt + tail, add_special_tokens=False, return_offsets_mapping=True)
            at = len(head)
            pairs = [(_token_at(enc.offset_mapping, at + name[0]), _token_at(enc.offset_mapping, at + q[0]))
                     for name, q in listed_pairs(p.prompt)]
            out = model(input_ids=torch.tensor([enc.input_ids]), output_attentions=True)
            total, n = total + back_attention(out.attentions, pairs), n + 1
    finally:
        model.set_attn_implementation(was)
    return [[round(float(v), 4) for v in layer] for layer in total / n]
