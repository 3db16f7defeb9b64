"""Bootstrap the tiny reasoner: train a small Llama and its tokenizer from scratch on the embedded task, on CPU.

``tiny_config.ensure_tiny_model`` caches the result under ``~/.cache/stepentropy_rl/tiny-<hash>`` keyed by the whole
config, so later runs load it instead of training. It is a plain HF checkpoint (``config.json``, safetensors,
tokenizer), served by vLLM as is.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import time
from pathlib import Path

import torch

from stepentropy_rl.batch import Batch
from stepentropy_rl.cot_format import THINK_CLOSE
from stepentropy_rl.probes import last_name_share, name_shares
from stepentropy_rl.tasks.basket import BasketConfig, generate, lookup_span, step_spans
from stepentropy_rl.tiny_config import TinyConfig
from stepentropy_rl.tokenizer import EOS, prompt_text, train_tokenizer

log = logging.getLogger(__name__)


def read_pruned(problem, rng: random.Random):
    """``problem`` with its redundant steps deleted at random (each kept with one probability drawn uniformly), as
    step pruning leaves a CoT; every essential step stays."""
    keep = rng.random()
    return dataclasses.replace(problem, steps=[s for s in problem.steps
                                               if s.label == "essential" or rng.random() < keep])


def _encode(tok, problems, essential_weight: float, pruned_reading: float = 0.0, seed: int = 0,
            reread_weight: float = 1.0) -> list[tuple[list[int], list[int], list[float]]]:
    """(prompt ids, response ids, response loss weights): ``essential_weight`` on the tokens of essential steps but
    their first, so that a small model learns the lookups sooner. The first token of a step is where the writer
    chooses which step comes next (a re-check or the next move); weighting it would bias that choice (measured:
    p(re-check) 0.18 where the data has 0.5). ``reread_weight`` likewise on the verbose style's rereads ("Reading it
    again: Fay 3."), whose name the model must copy from the move before, where the move's own name is a choice: with
    the moves weighted alone, the copy came late or never (``copy_accuracy``).

    A share ``pruned_reading`` of the examples is read pruned (``read_pruned``) with the loss on the answer after
    ``</think>`` only: the model learns to answer from a CoT that pruning left bare, as R1 reads one, without
    learning to write one (trained on bare CoTs, it wrote them: 0% redundant tokens at greedy)."""
    rng = random.Random(f"{seed}/pruned_reading")  # its own stream: the batches stay those of the recipe without it
    reading = [pruned_reading > 0 and rng.random() < pruned_reading for _ in problems]
    problems = [read_pruned(p, rng) if r else p for p, r in zip(problems, reading)]
    head, tail = prompt_text(tok, "\x00").split("\x00")  # render the chat template once
    prompts = tok([head + p.prompt + tail for p in problems], add_special_tokens=False).input_ids
    enc = tok([p.solution + EOS for p in problems], add_special_tokens=False, return_offsets_mapping=True)
    weights = []
    for p, offsets, r in zip(problems, enc.offset_mapping, reading):
        if r:  # the answer only: every token up to and including </think> is context
            answer_from = p.solution.index(THINK_CLOSE) + len(THINK_CLOSE)
            weights.append([1.0 if s >= answer_from else 0.0 for s, _ in offsets])
            continue
        spans = [(a, b, essential_weight if step.label == "essential" else reread_weight)
                 for a, b, step in step_spans(p) if step.label == "essential" or step.kind == "reread"]
        weights.append(_span_weights(offsets, spans))
    return list(zip(prompts, enc.input_ids, weights))


def _span_weights(offsets, spans, default: float = 1.0) -> list[float]:
    """Per token (its character ``offsets``, in order): ``w`` of the span ``(a, b, w)`` with ``a < start < b`` (a
    step's tokens but its first), else ``default``. One walk over the sorted, disjoint ``spans``."""
    out, i = [], 0
    for start, _ in offsets:
        while i < len(spans) and spans[i][1] <= start:
            i += 1
        out.append(spans[i][2] if i < len(spans) and spans[i][0] < start else default)
    return out


def _lookups(problem) -> list[int]:
    """Where each move's quantity starts in ``problem``'s solution."""
    return [start + at[0] for start, _, step in step_spans(problem)
            if step.label == "essential" and (at := lookup_span(step.text)) is not None]


def held_out_lookups(task: BasketConfig, n: int = 256) -> list:
    """The ``n`` held-out problems that ``lookup_accuracy`` and ``copy_accuracy`` read."""
    return generate(task, n, 0, "test")


@torch.no_grad()
def teacher_forced(model, tok, problems, batch_size: int = 64):
    """For each of ``problems``: its solution's character offsets, and per solution token whether the model's argmax
    after the tokens before it is that token (teacher-forced)."""
    head, tail = prompt_text(tok, "\x00").split("\x00")
    prompts = tok([head + p.prompt + tail for p in problems], add_special_tokens=False).input_ids
    enc = tok([p.solution + EOS for p in problems], add_special_tokens=False, return_offsets_mapping=True)
    for i in range(0, len(problems), batch_size):
        mb = Batch.from_pairs(prompts[i: i + batch_size], enc.input_ids[i: i + batch_size], pad_id=tok.pad_token_id)
        predicted = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits.argmax(-1)
        for j, problem in enumerate(problems[i: i + batch_size]):
            start, n = len(prompts[i + j]), len(enc.input_ids[i + j])
            hit = (predicted[j, start - 1: start + n - 1] == mb.input_ids[j, start: start + n]).tolist()
            yield problem, enc.offset_mapping[i + j], hit


def lookup_accuracy(model, tok, task: BasketConfig, n: int = 256, batch_size: int = 64) -> float:
    """Teacher-forced share of the moves of ``n`` held-out problems whose quantity the model predicts (argmax) after
    its person's name ("Now Fay" -> "3"). Answer accuracy cannot see this lookup: any binding of the quantities to
    the persons sums to the same total. Compare it with ``chance_lookup_accuracy``."""
    return _lookup_share(teacher_forced(model, tok, held_out_lookups(task, n), batch_size))


def _lookup_share(forced) -> float:
    hits, total = 0, 0
    for problem, offsets, hit in forced:
        for c in _lookups(problem):
            hits += hit[next(k for k, (s, e) in enumerate(offsets) if s <= c < e)]
            total += 1
    return hits / max(1, total)


def copy_accuracy(model, tok, task: BasketConfig, n: int = 256, batch_size: int = 64) -> dict[str, float]:
    """Per kind of redundant step, the teacher-forced share of ``n`` held-out problems' steps whose every token but
    the first the model predicts (argmax). Redundant steps restate what came before; where the model has not learned
    the copy (a reread's name drawn afresh, not copied from its move), the step's entropy measures the model's
    uncertainty rather than redundancy, and low-entropy pruning ranks it above the moves. The first token is the
    writer's choice of the next step, so it is left out."""
    return _copy_shares(teacher_forced(model, tok, held_out_lookups(task, n), batch_size))


def _copy_shares(forced) -> dict[str, float]:
    hits, total = {}, {}
    for problem, offsets, hit in forced:
        for start, end, step in step_spans(problem):
            if step.label != "redundant":
                continue
            inner = [h for (s, _), h in zip(offsets, hit) if start < s < end]
            hits[step.kind] = hits.get(step.kind, 0) + all(inner)
            total[step.kind] = total.get(step.kind, 0) + 1
    return {kind: hits[kind] / total[kind] for kind in sorted(total)}


def chance_lookup_accuracy(problems) -> float:
    """``lookup_accuracy`` of a model that sums right but binds at random: at each move it writes the most frequent
    quantity not yet used (a random one of them on a tie). Exact expectation over ``problems``' moves."""
    hits, total = 0.0, 0
    for problem in problems:
        left = [int(step.text[slice(*at)]) for step in problem.steps
                if step.label == "essential" and (at := lookup_span(step.text)) is not None]
        for q in list(left):
            top = max(left.count(v) for v in left)
            likeliest = {v for v in left if left.count(v) == top}
            hits += (q in likeliest) / len(likeliest)
            total += 1
            left.remove(q)
    return hits / max(1, total)


def _length_bucketed(data, batch_size: int, rng: random.Random, pool: int = 16):
    """Endless batches; each pool of ``pool`` batches (fewer where ``data`` holds fewer) is sorted by length so
    padding stays small."""
    pool = min(pool, len(data) // batch_size)
    while True:
        sample = rng.sample(data, batch_size * pool)
        sample.sort(key=lambda row: len(row[0]) + len(row[1]))
        batches = [sample[i: i + batch_size] for i in range(0, len(sample), batch_size)]
        rng.shuffle(batches)
        yield from batches


def _loss(model, mb: Batch, weight: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Weighted mean NLL of the next token, sum(w * nll) / sum(w). With 0/1 weights it is the model's own loss: the
    terse recipe's figures were measured on it, and the same sum in another floating-point order trains a
    measurably different model (README)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        if bool(((weight == 0) | (weight == 1)).all()):
            labels = mb.input_ids.masked_fill(weight == 0, -100)
            return model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, labels=labels).loss
        logits = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), mb.input_ids[:, 1:],
                                            reduction="none")
    return (nll * weight[:, 1:]).sum() / weight[:, 1:].sum()


def _compiled(model):
    """``model`` compiled by inductor for training (one graph for every sequence length). It generates C++, so it
    needs a compiler; without one the error says what to do instead of failing at the first step."""
    import shutil

    if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        raise RuntimeError("model.tiny.compile=true needs a C++ compiler for torch.compile (install g++), or set "
                           "model.tiny.compile=false, which trains another model (its own cache entry)")
    return torch.compile(model, dynamic=True)


@contextlib.contextmanager
def deterministic(on: bool = True):
    """torch's deterministic kernels inside (``on``): compiled on 2 threads, the bootstrap's parallel reductions were
    summed in another order on every run, so two bootstraps of one recipe were two models (8 steps, two runs: two
    models; measured 2026-12-05). About 2% slower. Eager training was deterministic already and is left as it was."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on or was, warn_only=warn_only and not on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


@contextlib.contextmanager
def fp32_head(model, on: bool = True):
    """Inside (``on``), ``model``'s LM head computes the logits in fp32 under bf16 autocast: its matmul takes the hidden
    states (fp32 in Llama's residual stream) and the tied weight as they are, where autocast rounds both to bf16.
    Compiled inside it, torch.compile traces the overriding ``forward`` (dynamo guards on it). Measured on an Intel AMX
    CPU (the verbose recipe at Llama's initial scale, 0.02; docs/measurements_2026_12_06_fp32_head.md): the loss's
    drop from its plateau (after which the bases name the people not yet handled) came at about step 460 / 430 / 395 of
    800 with the head in fp32 (seeds 0 / 1 / 2), at about 650 / 675 with it in bf16 (seeds 0 / 1: too late to
    finish), at about 410 with everything in fp32 (seed 0, twice the time). The saved checkpoint is the same kind
    either way; only training's arithmetic changes."""
    if not on:
        yield
        return
    head = model.lm_head
    found = vars(head).get("forward")  # an instance's own forward, put back on the way out

    def forward(hidden):
        with torch.autocast(hidden.device.type, enabled=False):
            return torch.nn.functional.linear(hidden.float(), head.weight, head.bias)

    head.forward = forward
    try:
        yield
    finally:
        if found is None:
            del head.forward
        else:
            head.forward = found


def build_model(cfg: TinyConfig, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    padded = math.ceil(vocab / 64) * 64
    mc = LlamaConfig(vocab_size=padded, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
                     tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None,
                     pad_token_id=None, initializer_range=getattr(cfg, "init_std", None) or 0.02)
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(mc)


def _train(model, cfg: TinyConfig, batches, opt, sched, pad_id: int, progress: bool):
    """``cfg.steps`` optimizer steps on ``batches``; (loss EMA, tokens seen, start time)."""
    from tqdm import tqdm

    forward = _compiled(model) if cfg.compile else model
    tokens, t0, loss_ema = 0, time.time(), None
    bar = tqdm(range(cfg.steps), desc="bootstrap tiny reasoner", disable=not progress, mininterval=5)
    for step in bar:
        prompts, resps, resp_weights = zip(*next(batches))
        mb = Batch.from_pairs(prompts, resps, pad_id=pad_id)
        weight = torch.zeros_like(mb.loss_mask)  # loss on the solution only
        for i, (p, w) in enumerate(zip(prompts, resp_weights)):
            weight[i, len(p): len(p) + len(w)] = torch.tensor(w)
        loss = _loss(forward, mb, weight, cfg.bf16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mb.attention_mask.sum())
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{tokens / (time.time() - t0):.0f}", refresh=False)
    return loss_ema, tokens, t0


def train_tiny_model(cfg: TinyConfig, out: Path, progress: bool = True) -> dict:
    """Train tokenizer and model for ``cfg`` and save both under ``out``; returns training stats."""
    cfg = cfg.resolved()

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    problems = generate(cfg.task, cfg.train_examples, cfg.seed, "train")
    tok = train_tokenizer([prompt_text_raw(p) for p in problems[:4000]], cfg.vocab_size,
                          whole_numbers=max(100, largest_number(cfg.task) + 1))
    model = build_model(cfg, len(tok))
    model.config.eos_token_id = tok.convert_tokens_to_ids(EOS)
    model.config.pad_token_id = tok.pad_token_id
    model.config.bos_token_id = tok.bos_token_id
    data = _encode(tok, problems, cfg.essential_weight, cfg.pruned_reading, cfg.seed, cfg.reread_weight)
    batches = _length_bucketed(data, cfg.batch_size, random.Random(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, cfg.warmup_steps, cfg.stable_steps, cfg.steps))
    model.set_attn_implementation(cfg.attn_implementation)
    model.train()
    with deterministic(bool(cfg.compile)), fp32_head(model, cfg.fp32_head and bool(cfg.bf16)):
        loss_ema, tokens, t0 = _train(model, cfg, batches, opt, sched, tok.pad_token_id, progress)
    model.eval()
    model.set_attn_implementation("sdpa")  # the saved config stays the default one
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = model.config.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    train_s = round(time.time() - t0, 1)
    held_out = held_out_lookups(cfg.task)
    forced = list(teacher_forced(model, tok, held_out))  # one forward pass for both checks
    lookup, chance = _lookup_share(forced), chance_lookup_accuracy(held_out)
    log.info("the tiny reasoner predicts %.1f%% of held-out quantities from their person's name (teacher-forced; "
             "binding at random: %.1f%%)", 100 * lookup, 100 * chance)
    copies = {kind: round(v, 4) for kind, v in _copy_shares(forced).items()}
    warn_uncopied(copies)
    names = [round(v, 4) for v in name_shares(forced)]
    last = last_name_share(forced)
    if cfg.task.style == "verbose":  # the bar was measured there (no terse base was probed)
        warn_unnamed(last)
    return {"train_s": train_s, "tokens": tokens, "final_loss": loss_ema,
            "params": sum(p.numel() for p in model.parameters()), "lookup_accuracy": round(lookup, 4),
            "chance_lookup_accuracy": round(chance, 4), "copy_accuracy": copies, "name_share_by_move": names,
            "last_person_named": None if last is None else round(last, 4)}


def lr_factor(step: int, warmup: int, stable: int, steps: int) -> float:
    """The learning rate at ``step`` as a share of its peak: linear warmup over ``warmup`` steps, ``stable`` steps at
    the peak, then cosine decay to 0.1 at ``steps``: 0.1 + 0.45 (1 + cos(pi t)), t the share of the decay done."""
    if step < warmup:
        return (step + 1) / warmup
    if step < warmup + stable:
        return 1.0
    frac = (step - warmup - stable) / max(1, steps - warmup - stable)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def warn_unnamed(share: float | None, bar: float = 0.8) -> bool:
    """Warn (and return True) where the model, teacher-forced, names the person of the last move of the held-out
    problems (the only one left: ``probes.last_name_share``, over all 256, about 2.5 points of standard error at 80%)
    below ``bar`` of the time: it has not learned which people are left. The bar was measured on the last place of
    the problems with the most people (four), on 3-4 person verbose bases: at Llama's initial scale 86-100% on nine
    of the ten whose final loss ended below 0.125, 10-74% on nine of the eleven above
    (docs/measurements_2026_12_06_fp32_head.md, "What the drop learns"); on the nine at 0.06, 92-99%
    (docs/measurements_2026_12_07_four_people.md, "The default recipe")."""
    if share is None or share >= bar:
        return False
    log.warning("the tiny reasoner names the last person left in %.0f%% of the held-out problems (teacher-forced; bar "
                "%.0f%%): it has not learned which people are left, and its CoTs may name a person twice or one not "
                "in the problem. Another model.tiny.seed may learn it (docs/measurements_2026_12_06_fp32_head.md, "
                "\"What the drop learns\")", 100 * share, 100 * bar)
    return True


def warn_uncopied(copies: dict[str, float], bar: float = 0.9) -> list[str]:
    """Log the redundant steps' ``copy_accuracy``; warn about (and return) the kinds copied below ``bar``."""
    log.info("the tiny reasoner copies %s of held-out redundant steps (teacher-forced, by kind)",
             ", ".join(f"{kind} {100 * v:.0f}%" for kind, v in copies.items()))
    low = [kind for kind, v in copies.items() if v < bar]
    if low:
        log.warning("the tiny reasoner has not learned to copy its %s steps: their entropy measures its uncertainty, "
                    "not redundancy, and low-entropy pruning will rank them above the moves (README: the copy check)",
                    ", ".join(low))
    return low


def largest_number(task: BasketConfig) -> int:
    """The largest number a problem of ``task`` can contain (start plus all takes, or the final total)."""
    return task.start_max + task.max_people * task.max_quantity


def prompt_text_raw(p) -> str:
    """Text used to train the BPE: the chat frame, the question and the solution."""
    text = f"<|im_start|>user\n{p.prompt}<|im_end|>\n<|im_start|>assistant\n\n{p.solution}<|im_end|>\n"
    return text.replace("</think>", "")  # think tags and chat markers are added tokens, kept out of the merges
