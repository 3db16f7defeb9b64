"""Prune stage and SFT warm start (step-entropy paper, Sec. SFT).

Prune: the policy writes CoTs for the training problems (or, with ``source: gold``, the dataset's own solutions
are used); the correct ones that ended (not cut at ``max_tokens`` after their answer) are scored (exact token
entropies from the reference), their lowest-entropy steps replaced by ``[SKIP]`` at ``ratio``, and the answer is
regenerated after the pruned thinking; a pruned CoT is kept for SFT only if that answer is still right
(``keep_verified``).
On labelled data (the embedded task) each row also counts the essential steps pruning took out (``lost_essential``):
the answer check cannot see them where a later step restates the total, and SFT then learns to skip a needed step.
SFT: the learners fine-tune on ``prompt -> pruned thinking </think> answer``, loss on the response tokens only.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Iterator

from stepentropy_rl.driver import progress
from stepentropy_rl.batch import Batch
from stepentropy_rl.config import PruneStageConfig, SFTConfig
from stepentropy_rl.cot_cache import CachedCoTs, written
from stepentropy_rl.cot_format import THINK_CLOSE, answer_prefix, answer_text, split_thinking
from stepentropy_rl.data import DataError
from stepentropy_rl.driver.remote import token_entropies
from stepentropy_rl.driver.evaluate import labelled
from stepentropy_rl.driver.tracking import require_finite
from stepentropy_rl.entropy import scored_spans
from stepentropy_rl.pruning import prune_steps, pruned_ids
from stepentropy_rl.tasks.basket import label_step
from stepentropy_rl.tasks.grading import grade_all
from stepentropy_rl.tokenizer import encode, prompt_ids, prompt_text, token_offsets

log = logging.getLogger(__name__)


def build_pruned_dataset(problems, rollout, reference, tokenizer, grade, prune: PruneStageConfig, sampling: dict,
                         ref_batch_size: int = 16, cache=None, ref_chunk_rows: int = 2048,
                         answer_temperature: float | None = None) -> tuple[list[dict], dict]:
    """Rows ``{id, prompt, answer, response, response_ids, n_steps, n_pruned, tokens_full, tokens_pruned}`` and stats.
    ``response_ids`` is the CoT's own ids with the pruned steps replaced (``pruning.pruned_ids``), ``response`` their
    text; the token counts are of the CoT's thinking and of the row's. The CoTs are sampled under ``sampling``, the
    answers after pruned thinking at ``answer_temperature`` (``rollout``'s; None: the CoTs' temperature).

    ``prune.keep_verified`` keeps a row only if the policy, given the pruned thinking, still answers right; it reads
    the thinking with the pruned steps deleted (``verify_with: deletion``) or with the row's placeholder
    (``placeholder``). The base model has never seen ``[SKIP]``: a small one loses the thread after it (README), so
    with ``placeholder`` the check measured that, not whether the kept steps still carry the answer.

    On labelled problems each row gains ``lost_essential`` (pruned steps that ``basket.label_step`` calls
    essential) and the stats ``kept_missing_essential`` (verified rows with any); ``prune.keep_essential`` drops those
    rows (``None``: wherever the problems are labelled; ``True`` on unlabelled problems is an error).

    ``rollout``: a ``RolloutGroup`` serving the policy that writes the CoTs; ``grade(response, answer)``: the
    span-aware grader (``grading.make_grader``). ``cache``: a ``cot_cache.CoTCache`` that the policy's CoTs and
    their entropies are read from when an earlier run wrote the same ones (the engines then get the sampler state
    that writing them left), and written to otherwise; ``stats["cots_cached"]`` says which.
    """
    with_labels = labelled(problems)
    drop_lost = with_labels if prune.keep_essential is None else prune.keep_essential
    if drop_lost and not with_labels:
        raise ValueError("trainer.prune.keep_essential needs step labels (the embedded task's data); these problems "
                         "have none")
    clock = time.perf_counter()
    seconds = {}
    pids = [prompt_ids(tokenizer, p) for p in problems]
    if prune.source == "gold":  # the dataset's own verbose solutions instead of the policy's CoTs
        gold = [{"text": p.solution or "", "token_ids": encode(tokenizer, p.solution or "")} for p in problems]
        got = CachedCoTs(gold, False)
    else:
        got = written(cache, rollout, pids, {**sampling, "skip_special_tokens": False}, _kept_fields)
    cots = got.cots
    seconds["generate"] = time.perf_counter() - clock
    grades = grade_all(grade, [c["text"] for c in cots], [p.answer for p in problems])
    ok = [i for i, (c, right) in enumerate(zip(cots, grades)) if right and split_thinking(c["text"])[1]]
    cut = [i for i in ok if cots[i].get("finish_reason") == "length"]  # a right answer, then cut at max_tokens
    if cut:
        log.info("%d right CoTs ran to max_tokens after their answer (a loop, or more text after it); SFT would teach "
                 "the cut-off text followed by EOS, so they are left out", len(cut))
        ok = [i for i in ok if i not in set(cut)]
    entropies = got.entropies(ok, lambda idx: token_entropies(reference, [pids[i] for i in idx],
                                                              [cots[i]["token_ids"] for i in idx], ref_batch_size,
                                                              ref_chunk_rows))
    candidates = []
    placeholder = encode(tokenizer, prune.placeholder) if prune.placeholder else None  # one id once training added it
    close, stop_ids = encode(tokenizer, THINK_CLOSE), set(getattr(tokenizer, "all_special_ids", ()))
    for i, ent in zip(ok, entropies):
        ids = cots[i]["token_ids"]
        thinking, offsets, spans, ents = scored_spans(tokenizer, ids, ent, prune.delimiter, prune.aggregate)
        texts = [s.text.strip() for s in spans]
        pruned = prune_steps(texts, ents, "low", prune.ratio, placeholder=prune.placeholder or None,
                             protect_first=prune.protect_first, protect_last=prune.protect_last,
                             merge_runs=prune.merge_runs)
        # from the CoT's own ids: the pruned text encoded anew tokenizes differently beside [SKIP] (pruning.pruned_ids)
        kept = pruned_ids(tokenizer, ids, offsets, thinking, spans, pruned.pruned, placeholder, prune.merge_runs)
        probe = kept
        if prune.verify_with == "deletion":  # the same steps, left out without a trace
            probe = pruned_ids(tokenizer, ids, offsets, thinking, spans, pruned.pruned, None)
        n_think = spans[-1].tok_end if spans else 0  # the spans tile the thinking's ids; </think> and the answer follow
        after = list(ids[n_think:])
        if after and after[-1] not in close and (after[-1] == tokenizer.eos_token_id or (
                cots[i].get("finish_reason") == "stop" and after[-1] in stop_ids)):
            after.pop()  # vLLM keeps the token it stopped on (any of generation_config's EOS ids); SFT adds its EOS
        response_ids, prefix, n_kept, from_text = kept + after, pids[i] + probe + close, len(kept), False
        if after[:len(close)] != close or (n_think and offsets[n_think - 1][1] > len(thinking)):
            # "</think>" not a token of its own after the thinking (written in pieces, or a base without the token):
            # the row is its text encoded, as rows were before
            from_text, text = True, pruned.text(prune.delimiter)
            probe_text = text if prune.verify_with != "deletion" else \
                prune.delimiter.join(t for t, cut in zip(texts, pruned.pruned) if not cut)
            response_ids = encode(tokenizer, f"{text}\n{THINK_CLOSE}{answer_text(cots[i]['text'])}")
            prefix = encode(tokenizer, answer_prefix(prompt_text(tokenizer, problems[i]), probe_text))
            n_kept = len(encode(tokenizer, text))
        asked = {k: v for k, v in (("system", problems[i].system), ("chat_kwargs", problems[i].chat_kwargs)) if v}
        candidates.append({"id": problems[i].id, "prompt": problems[i].prompt, **asked, "answer": problems[i].answer,
                           "response": token_offsets(tokenizer, response_ids)[0], "response_ids": response_ids,
                           "n_steps": len(texts), "n_pruned": pruned.n_pruned, "prefix": prefix,
                           "tokens_full": n_think, "tokens_pruned": n_kept,
                           **({"from_text": True} if from_text else {})})
        if with_labels:
            candidates[-1]["lost_essential"] = sum(cut and label_step(t)[0] == "essential"
                                                   for t, cut in zip(texts, pruned.pruned))
    rows, verify_cut = candidates, 0
    verify_start = time.perf_counter()
    seconds["score"] = verify_start - clock - seconds["generate"]  # grade, reference entropies, pruning
    if prune.keep_verified and candidates:
        answer = {} if answer_temperature is None else {"temperature": float(answer_temperature)}
        regen = rollout.generate([c["prefix"] for c in candidates], {**sampling, **answer, "skip_special_tokens": False,
                                                                     "max_tokens": prune.answer_max_tokens})
        # the regenerated text is what follows </think> after the pruned thinking
        kept = grade_all(grade, [THINK_CLOSE + a[0]["text"] for a in regen], [c["answer"] for c in candidates])
        rows = [c for c, keep in zip(candidates, kept) if keep]
        verify_cut = sum(not keep and a[0].get("finish_reason") == "length" for a, keep in zip(regen, kept))
        if verify_cut > 0.02 * len(candidates):
            log.warning("%d of the %d answer checks ran out of trainer.prune.answer_max_tokens=%d before a right "
                        "answer and were dropped as wrong: raise it where the policy's answers are long (R1 writes "
                        "a solution after </think>)", verify_cut, len(candidates), prune.answer_max_tokens)
        if len(rows) < 0.5 * len(candidates):
            log.warning("the answer check failed for %d of the %d pruned CoTs: the policy cannot answer from most of "
                        "them (trainer.prune.ratio=%s takes steps it needs, or it cannot read verify_with=%s); a lower "
                        "ratio keeps more", len(candidates) - len(rows), len(candidates), prune.ratio,
                        prune.verify_with)
    verified = len(rows)
    seconds["verify"] = time.perf_counter() - verify_start
    for r in rows:
        r.pop("prefix")
    missing = sum(r.get("lost_essential", 0) > 0 for r in rows)
    if drop_lost:
        rows = [r for r in rows if not r["lost_essential"]]
    elif with_labels and missing > 0.1 * max(1, len(rows)):
        log.warning("pruning took a labelled essential step out of %d of the %d kept CoTs (the answer check passes "
                    "where a later step restates the total); SFT learns to skip it. trainer.prune.keep_essential=true "
                    "drops them (README: the last-essential-step effect)", missing, len(rows))
    stats = {"problems": len(problems), "correct_cots": len(ok) + len(cut), "cut_after_answer": len(cut),
             "pruned": len(candidates), "verified": verified, "verify_cut": verify_cut,
             "kept": len(rows),
             "kept_token_fraction": sum(r["tokens_pruned"] for r in rows) / max(1, sum(r["tokens_full"] for r in rows))}
    if with_labels:
        stats["kept_missing_essential"] = missing
    from_text = sum(r.get("from_text", False) for r in rows)
    if from_text:
        stats["rows_from_text"] = from_text
        log.warning("%d kept CoTs wrote </think> other than as its token: their rows are their text encoded", from_text)
    stats["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    if cache is not None and prune.source == "policy":
        stats["cots_cached"] = got.hit
    return rows, stats


def _kept_fields(sample: dict) -> dict:
    """What the prune stage reads of a sample (and the cache keeps)."""
    return {"text": sample["text"], "token_ids": sample["token_ids"], "finish_reason": sample.get("finish_reason")}


def run_sft(rows: list[dict], learners, tokenizer, sft: SFTConfig, seed: int, tracker=None) -> list[dict]:
    """Fine-tune the learners on ``rows`` (loss on response tokens); linear LR decay; returns per-step metrics.

    Each response ends with the tokenizer's own EOS id (R1's ``<｜end▁of▁sentence｜>``, the tiny reasoner's
    ``<|im_end|>``), so the model learns to stop where the engines stop.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: SFT could not teach the model to stop")
    if len(rows) < learners.world_size:  # every rank needs a row of each batch
        raise DataError(f"SFT has {len(rows)} rows for {learners.world_size} learner ranks: too few pruned CoTs "
                           "survived the prune stage (prune/stats.json counts what the answer check and, on labelled "
                           "data, trainer.prune.keep_essential dropped)")
    data = sft_batch(tokenizer, rows)
    steps = sft_steps(sft, len(data))
    history = []
    bar = progress.bar(steps, "SFT", "step")
    for step, rows_of_step in enumerate(epoch_batches(len(data), sft.batch_size, steps, random.Random(seed))):
        learners.set_lr(sft.lr * (1 - step / steps))
        m = learners.train_step(data.select(rows_of_step), {"kind": "sft"})
        require_finite(m, f"SFT step {step}")  # a diverged SFT is not saved or marked done
        history.append(m)
        if tracker:
            tracker.log({f"sft/{k.split('/')[-1]}": v for k, v in m.items()}, step=step,
                        console_keys=("sft/nll", "sft/grad_norm"))
        bar.update(1)
    bar.close()
    return history


def sft_steps(sft: SFTConfig, rows: int) -> int:
    """Optimizer steps: ``epochs`` whole passes over the rows (``ceil(epochs * rows / batch)``, with the batch
    ``batch_size`` or all the rows where fewer), at least ``min_steps`` (a small kept set is then passed over more).

    Measured on the AMX CPU's compiled base: 172 rows x 4 epochs (21 steps at lr 1e-3) left the model half-way into
    the pruned format (SFT 36.8%, stray bytes in a third of the CoTs); 86 steps held it (90.4%).
    """
    return max(1, sft.min_steps, -(-sft.epochs * rows // max(1, min(sft.batch_size, rows))))


def epoch_batches(rows: int, batch_size: int, steps: int, rng: random.Random) -> Iterator[list[int]]:
    """``steps`` batches of ``min(batch_size, rows)`` row indices: passes over the rows, each in a fresh random
    order (as a shuffling sampler's epochs), so every row is seen once per pass. A batch that straddles two passes
    takes the rest of the old one and the first rows of the new order that it does not hold yet, so no batch holds
    a row twice; the rows it left for later are the new pass's next ones."""
    size = min(batch_size, rows)
    left: list[int] = []  # this pass's rows not yet seen, in its order
    for _ in range(steps):
        batch, left = left[:size], left[size:]
        if len(batch) < size:
            order = rng.sample(range(rows), rows)
            taken = [i for i in order if i not in batch][:size - len(batch)]
            batch, seen = batch + taken, set(taken)
            left = [i for i in order if i not in seen]
        yield batch


def sft_batch(tokenizer, rows: list[dict]) -> Batch:
    """Each row's prompt ids as every actor sees them, then its response ids and the tokenizer's EOS id. The response
    ids are the row's ``response_ids`` (the prune stage's, from the CoT's own ids); a row without them (written by
    an older version, or by hand) has its ``response`` text encoded."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    from_text = sum(not r.get("response_ids") for r in rows)
    if from_text:
        log.warning("%d SFT rows have no response_ids: their text is encoded, which tokenizes the whitespace before "
                    "[SKIP] as the base never writes it; rerun the prune stage to build them from the CoTs' ids",
                    from_text)
    return Batch.from_pairs([prompt_ids(tokenizer, r) for r in rows],
                            [list(r.get("response_ids") or encode(tokenizer, r["response"])) + [tokenizer.eos_token_id]
                             for r in rows], pad)
