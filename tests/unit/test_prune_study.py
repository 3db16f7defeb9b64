"""The study's accounting with in-process fake workers: failures count as wrong, kept fractions add up."""
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoTokenizer

from stepentropy_rl.config import build
from stepentropy_rl.data import generated
from stepentropy_rl.cot_stats import compare_strategies
from stepentropy_rl.driver.study import auroc, placeholder_caveat, run_study, writes_answer
from stepentropy_rl.report import paired_table, summary_table
from stepentropy_rl.tasks.basket import BasketConfig
from stepentropy_rl.tasks.grading import exact_match
from stepentropy_rl.tokenizer import prompt_text, train_tokenizer
from pathlib import Path

CONF = str(Path(__file__).resolve().parents[2] / "conf")


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class FakeRollout:
    """Writes the gold solution for CoTs; answers with the gold answer unless the thinking was pruned to garbage."""

    def __init__(self, problems, broken_ids=()):
        self.by_prompt = {p.prompt: p for p in problems}
        self.broken = set(broken_ids)
    def generate(self, prompts, sampling):
        out = []
        for ids in prompts:
            assert not isinstance(ids, str), "engines get token ids, never text"
            text = self.tok.decode(ids, skip_special_tokens=False)
            p = next(p for q, p in self.by_prompt.items() if q in text)
            if p.id in self.broken:
                out.append([{"text": "\x00garbage", "token_ids": [], "finish_reason": "length"}])
            elif text.endswith("</think>"):  # answer regeneration: correct only if every essential step survived
                ok = all(s["text"] in text for s in p.steps if s["label"] == "essential")
                out.append([{"text": f"The answer is \\boxed{{{p.answer if ok else -1}}}.", "token_ids": [1],
                             "finish_reason": "stop"}])
            else:
                out.append([{"text": p.solution, "token_ids": self.tok(p.solution, add_special_tokens=False).input_ids,
                             "finish_reason": "stop"}])
        return out


class FakeReference:
    """Entropy 2.0 on essential steps' tokens, 0.1 elsewhere: an oracle that low-entropy pruning should exploit."""

    def __init__(self, tok):
        self.tok = tok
        self.score = _Remote(self._score)

    def _score(self, batch, *a):
        out = []
        for ids in (batch.response_ids(i) for i in range(len(batch))):
            text = self.tok.decode(ids)
            ents, pos = [], 0
            for t in ids:
                piece = self.tok.decode([t])
                line_start = text.rfind("\n\n", 0, pos + 1)
                step = text[line_start + 2 if line_start >= 0 else 0:].split("\n\n")[0]
                ents.append(2.0 if step.startswith("Now ") else 0.1)
                pos += len(piece)
            out.append(ents)
        return {"entropy": batch.response_column(out), "logprobs": torch.zeros_like(batch.loss_mask)}


@pytest.fixture(scope="module")
def setup():
    return study_inputs()


def study_inputs():
    """12 labelled problems, a tokenizer trained on them, the study's config."""
    probs = generated(BasketConfig(redundancy=0.5), 12, 0, "test")
    tok = train_tokenizer([p.prompt + "\n" + p.solution for p in probs], 400)
    tok.save_pretrained("/tmp/_fake_tok")
    tok = AutoTokenizer.from_pretrained("/tmp/_fake_tok")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x"])
    return probs, tok, build(cfg)


def test_oracle_entropy_low_pruning_keeps_accuracy_high_pruning_destroys_it(setup):
    probs, tok, cfg = setup
    roll = FakeRollout(probs)
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    acc = {(r["strategy"], r["ratio"]): r for r in res.summary}
    assert all(r["n"] == len(probs) for r in res.summary)
    assert acc[("low", 0.0)]["accuracy"] == 1.0 and acc[("low", 0.0)]["kept_fraction"] == pytest.approx(1.0)
    assert acc[("low", 0.2)]["accuracy"] == 1.0
    assert acc[("high", 0.2)]["accuracy"] < 0.5
    assert acc[("low", 0.8)]["kept_fraction"] < acc[("low", 0.2)]["kept_fraction"] < 1.0
    assert res.auroc == 1.0 and res.auroc_generated == 1.0


def test_unlabelled_problems_get_no_labels_from_the_tasks_grammar(setup):
    """A study of another dataset's CoTs labels none of their steps with the embedded task's grammar (a step opening
    "Therefore," or "Now " there is not the task's recap or move), so its AUROC on them is left undefined."""
    import dataclasses

    probs, tok, cfg = setup
    bare = [dataclasses.replace(p, steps=[]) for p in probs]
    roll = FakeRollout(bare)
    roll.tok = tok
    res = run_study(cfg, bare, roll, FakeReference(tok), tok, exact_match)
    generated_steps = [s for s in res.steps if s["source"] == "generated"]
    assert generated_steps and all(s["label"] is None and s["kind"] is None for s in generated_steps)
    assert math.isnan(res.auroc_generated)


def test_identical_pruned_prefixes_are_answered_once(setup):
    probs, tok, cfg = setup
    roll = FakeRollout(probs)
    roll.tok = tok
    asked = []
    gen = roll.generate
    roll.generate = lambda prompts, sampling: asked.append(list(prompts)) or gen(prompts, sampling)
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    regen = asked[-1]
    assert len(regen) == len(set(map(tuple, regen))) < len(res.rows)
    # at ratio 0 every strategy keeps the whole CoT, so all of them are scored on one answer per problem
    at_zero = [r for r in res.rows if r["ratio"] == 0.0]
    for pid in {r["id"] for r in at_zero}:
        assert len({r["regenerated"] for r in at_zero if r["id"] == pid}) == 1


def test_failed_samples_count_as_wrong_never_dropped(setup):
    probs, tok, cfg = setup
    roll = FakeRollout(probs, broken_ids=[probs[0].id, probs[1].id])
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    for r in res.summary:
        assert r["n"] == len(probs) and r["accuracy"] <= (len(probs) - 2) / len(probs)


class CutAtMaxTokens(FakeRollout):
    """The CoTs of ``ids`` run to max_tokens: ``edit`` says what each became (the answer regenerations stay; with
    ``answers`` the answer regenerations are cut instead)."""

    answers = False

    def __init__(self, problems, ids):
        super().__init__(problems)
        self.ids = set(ids)

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        for ids, o in zip(prompts, out):
            text = self.tok.decode(ids, skip_special_tokens=False)
            p = next(p for q, p in self.by_prompt.items() if q in text)
            if p.id in self.ids and text.endswith("</think>") == self.answers:
                self.edit(o[0])
                o[0]["finish_reason"] = "length"
        return out


class CutRollout(CutAtMaxTokens):
    """Cut before ``</think>``: the thinking whole, nothing after it."""

    def edit(self, sample):
        thinking = sample["text"].split("</think>")[0]
        sample.update(text=thinking, token_ids=self.tok(thinking, add_special_tokens=False).input_ids)


def test_a_cot_cut_before_its_think_close_counts_wrong_under_every_strategy(setup):
    """Its whole thinking survives at ratio 0, and an answer forced after ``</think>`` came out right: the study
    counted a CoT that failed as right, while the full-CoT accuracy counted it wrong."""
    probs, tok, cfg = setup
    roll = CutRollout(probs, [probs[3].id])
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    cut = [r for r in res.rows if r["id"] == probs[3].id]
    assert cut and all(not r["cot_closed"] and not r["correct"] for r in cut)
    assert all(r["correct"] for r in res.rows if r["ratio"] == 0.0 and r["id"] != probs[3].id)


class CopyingRollout(FakeRollout):
    """Answers right exactly when the kept thinking still writes the answer: a model that copies it from a restate."""

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        for ids, o in zip(prompts, out):
            text = self.tok.decode(ids, skip_special_tokens=False)
            p = next(p for q, p in self.by_prompt.items() if q in text)
            if text.endswith("</think>"):
                copied = writes_answer(text[text.index(p.prompt) + len(p.prompt):], p.answer)
                o[0]["text"] = f"The answer is \\boxed{{{p.answer if copied else -1}}}."
        return out


def test_writes_answer_takes_whole_answers_only():
    assert writes_answer("So the basket has 11 now.", "11") and writes_answer("it is 11.", "11")
    assert not any(writes_answer(t, "11") for t in ("111 cards", "2.11", "11.5", "x11", ""))
    assert writes_answer("half: \\frac{1}{2}.", "\\frac{1}{2}") and not writes_answer("anything", " ")


def test_accuracy_is_split_by_whether_the_thinking_still_writes_the_answer(setup):
    """A model that copies the answer from the kept thinking: right with it, wrong without, at every ratio; the
    full gold CoTs all write it and heavy pruning removes it from some (both sides of the split are exercised)."""
    probs, tok, cfg = setup
    roll = CopyingRollout(probs)
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    for r in res.summary:
        sel = [row for row in res.rows if (row["strategy"], row["ratio"]) == (r["strategy"], r["ratio"])]
        assert r["answer_in_thinking"] == pytest.approx(sum(row["answer_in_thinking"] for row in sel) / len(sel))
        assert r["accuracy_answer_in_thinking"] in (1.0, None) and r["accuracy_answer_not_in_thinking"] in (0.0, None)
        assert r["accuracy"] == pytest.approx(r["answer_in_thinking"])
    assert all(r["answer_in_thinking"] == 1.0 for r in res.summary if r["ratio"] == 0.0)
    assert any(0.0 < r["answer_in_thinking"] < 1.0 for r in res.summary)
    assert "answer in thinking" in summary_table(res.summary)


def _rows(verdicts: dict) -> list[dict]:
    return [{"strategy": s, "ratio": 0.4, "id": f"p{i}", "correct": c} for s, vs in verdicts.items()
            for i, c in enumerate(vs)]


def test_strategies_are_compared_on_the_same_problems_with_a_paired_error():
    """low right on 10 of 10, random on 5, high on the same 5 but one: neighbours first, paired errors by hand."""
    rows = _rows({"high": [True] * 4 + [False] * 6, "low": [True] * 10, "random": [True] * 5 + [False] * 5})
    got = {(r["better"], r["worse"]): r for r in compare_strategies(rows)}
    assert list(got) == [("low", "random"), ("random", "high"), ("low", "high")]
    lr, rh = got[("low", "random")], got[("random", "high")]
    assert lr["difference"] == 0.5 and lr["stderr"] == pytest.approx(math.sqrt(5 / 18 / 10))  # sd of five 1s, five 0s
    assert lr["z"] == pytest.approx(3.0) and lr["sign_test_p"] == 0.0625 and not lr["ahead_beyond_error"]  # 5 / 0
    assert got[("low", "high")]["ahead_beyond_error"]  # 6 / 0: p 0.031
    assert (lr["only_better_right"], lr["only_worse_right"], lr["n"]) == (5, 0, 10)
    assert rh["difference"] == pytest.approx(0.1) and rh["z"] == pytest.approx(1.0) and not rh["ahead_beyond_error"]
    # the same accuracies on disjoint problems: unpaired they tie, paired the spread is large and nothing is ahead
    rows = _rows({"low": [True] * 5 + [False] * 5, "random": [False] * 5 + [True] * 5})
    (tie,) = compare_strategies(rows)
    assert tie["difference"] == 0 and tie["stderr"] > 0.3 and not tie["ahead_beyond_error"]
    # every problem differs alike: no spread, z undefined; ahead from 6 problems on (the sign test), not on 3 (one
    # problem alone used to count as ahead beyond the error); behind is never ahead
    (alike,) = compare_strategies(_rows({"low": [True] * 6, "high": [False] * 6}))
    assert alike["z"] is None and alike["ahead_beyond_error"] and "| - | yes (0.031) |" in paired_table([alike])
    for n in (1, 3, 5):
        (few,) = compare_strategies(_rows({"low": [True] * n, "high": [False] * n}))
        assert few["z"] is None and not few["ahead_beyond_error"]
    # z >= 2 on few discordant problems is not beyond the error: 4 only-low of 500 gave z = 2.0 (sign test p 0.125)
    (four,) = compare_strategies(_rows({"low": [True] * 500, "high": [True] * 496 + [False] * 4}))
    assert four["z"] == pytest.approx(2.0, abs=0.01) and four["sign_test_p"] == 0.125
    assert not four["ahead_beyond_error"]
    high = [True] * 489 + [False] * 9 + [True] * 2
    (nine,) = compare_strategies(_rows({"low": [True] * 498 + [False] * 2, "high": high}))
    assert nine["z"] > 2 and nine["sign_test_p"] > 0.05 and not nine["ahead_beyond_error"]  # 9 / 2: p 0.065
    (behind,) = compare_strategies(_rows({"low": [False] * 3, "high": [True] * 3}))
    assert behind["difference"] == -1 and not behind["ahead_beyond_error"]
    # a ratio only one strategy ran has no comparison; problems only one strategy answered are left out
    rows = _rows({"low": [True] * 4, "random": [False] * 3}) + [{"strategy": "low", "ratio": 0.6, "id": "p0",
                                                                 "correct": True}]
    (only,) = compare_strategies(rows)
    assert (only["ratio"], only["n"], only["difference"]) == (0.4, 3, 1.0)
    # a strategy added with register_strategy is compared too, after the paper's (it was left out silently)
    (custom,) = compare_strategies(_rows({"low": [True] * 8, "my_rule": [False] * 8}))
    assert (custom["better"], custom["worse"], custom["ahead_beyond_error"]) == ("low", "my_rule", True)


def test_the_study_compares_its_strategies_as_its_summary_counts_them(setup):
    probs, tok, cfg = setup
    roll = CopyingRollout(probs)
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    acc = {(r["strategy"], r["ratio"]): r["accuracy"] for r in res.summary}
    assert res.paired and all(p["ratio"] > 0 for p in res.paired)
    for p in res.paired:
        assert p["difference"] == pytest.approx(acc[(p["better"], p["ratio"])] - acc[(p["worse"], p["ratio"])])
        assert p["only_better_right"] - p["only_worse_right"] == round(p["difference"] * p["n"])
    assert any(p["difference"] != 0 for p in res.paired)


def test_auroc_direction():
    assert auroc([0.1, 0.2, 3.0, 4.0], [True, True, False, False]) == 1.0
    assert auroc([3.0, 4.0, 0.1, 0.2], [True, True, False, False]) == 0.0


def test_auroc_refuses_a_nan_score_and_ranks_infinities():
    """A nan step entropy was ranked below every number (0.25 here, for a redundant step at 0.1 and an essential
    one at 2.0 among them) and the study reported it."""
    with pytest.raises(ValueError, match="1 of the 4 step scores are nan"):
        auroc([0.1, float("nan"), 2.0, 3.0], [True, False, False, True])
    assert auroc([0.1, float("inf"), 2.0, 3.0], [True, False, False, True]) == 0.75


def test_auroc_is_the_pairwise_definition_with_ties_counting_half():
    """Rank-based AUROC equals its definition over every (redundant, essential) pair, on data full of ties."""
    import random

    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.0, 0.5, 1.0, 1.5, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.4 for _ in range(n)]
        if len(set(labels)) < 2:
            continue
        pairs = [(r, e) for r, lr in zip(scores, labels) if lr for e, le in zip(scores, labels) if not le]
        expected = sum(1.0 if r < e else 0.5 if r == e else 0.0 for r, e in pairs) / len(pairs)
        assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(auroc([1.0, 2.0], [False, False]))


def test_training_prune_stage_keeps_only_reverified_pruned_cots(setup):
    """The main job's default prune stage: the policy's own CoTs (source: policy), graded on the answer after
    </think>, scored by the reference, pruned low-entropy first, and kept only if the answer regenerated after the
    pruned thinking is still right. A CoT that failed is never pruned into SFT data."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll = FakeRollout(probs, broken_ids=[probs[0].id])
    roll.tok = tok
    prune = PruneStageConfig(source="policy", ratio=0.5, keep_verified=True, answer_max_tokens=16, merge_runs=False)
    rows, stats = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                       {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    assert stats["problems"] == 12 and stats["correct_cots"] == 11 == stats["pruned"]  # the broken CoT is out
    assert 0 < stats["kept"] == len(rows) <= stats["verified"] < stats["pruned"]  # a lost move fails the re-check
    assert set(stats["seconds"]) == {"generate", "score", "verify"} and min(stats["seconds"].values()) >= 0
    by_id = {p.id: p for p in probs}
    for r in rows:
        p = by_id[r["id"]]
        assert all(s["text"] in r["response"] for s in p.steps if s["label"] == "essential")
        assert r["response"].count("[SKIP]") == r["n_pruned"] > 0
        assert r["response"].endswith(f"\n</think>\n\nThe answer is \\boxed{{{p.answer}}}.")


def test_sft_rows_are_the_cots_own_ids_but_the_pruned_steps(setup):
    """The SFT rows were encoded from their text, and a tokenizer splits text at an added token: the "\\n\\n" before
    each [SKIP] became one merged token that the base never writes (the tiny reasoner: 0 in its base's 2048 CoTs, 8513
    in 1954 rows) and that every SFT and GRPO model learned to write. A row is now its CoT's ids with each pruned step
    replaced by [SKIP] and the newlines that ended it; so is what SFT trains on."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset, sft_batch
    from stepentropy_rl.pruning import add_skip_token
    from stepentropy_rl.tasks.grading import make_grader
    from stepentropy_rl.tokenizer import encode

    probs, _, _ = setup
    # "\n\n" ending a text teaches the merged token, as the tiny reasoner's tokenizer has it
    tok = train_tokenizer([p.prompt + "\n" + p.solution for p in probs] + ["Yes.\n\n"] * 20, 600)
    skip, merged = add_skip_token(tok), tok.convert_tokens_to_ids("\u010a\u010a")
    roll = FakeRollout(probs)
    roll.tok = tok
    prune = PruneStageConfig(ratio=0.5, keep_verified=True, keep_essential=False, answer_max_tokens=16,
                             merge_runs=False)
    rows, _ = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                   {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    by_id = {p.id: p for p in probs}
    # the case: most rows' text encodes to the merged token, which no CoT holds
    assert merged is not None and sum(merged in encode(tok, r["response"]) for r in rows) >= len(rows) / 2 > 0
    for r in rows:
        cot = encode(tok, by_id[r["id"]].solution)
        assert merged not in cot
        ids = sft_batch(tok, [r]).response_ids(0)
        assert ids[-1] == tok.eos_token_id and merged not in ids and ids.count(skip) == r["n_pruned"] > 0
        stretches = " ".join(map(str, ids[:-1])).split(str(skip))  # between the [SKIP]s: the CoT's ids as written
        assert all(f" {s.strip()} " in f" {' '.join(map(str, cot))} " for s in stretches if s.strip())
        assert r["tokens_full"] == cot.index(tok.convert_tokens_to_ids("</think>"))
        assert r["tokens_pruned"] == ids.index(tok.convert_tokens_to_ids("</think>"))


class ClosedInPieces(FakeRollout):
    """Writes `` </think>`` as an added token " </" (a space and the tag's start, as R1's ".</" or ")</") and the
    rest of the tag's characters, not as the tag's token: the first piece starts inside the thinking."""

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        close = self.tok.convert_tokens_to_ids("</think>")
        for o in out:
            ids = o[0]["token_ids"]
            if close in ids:
                at = ids.index(close)
                thinking = self.tok.decode(ids[:at]).rstrip("\n")
                o[0]["token_ids"] = (self.tok(thinking, add_special_tokens=False).input_ids
                                     + self.tok.convert_tokens_to_ids([" </", *"think>"]) + ids[at + 1:])
                o[0]["text"] = self.tok.decode(o[0]["token_ids"])
        return out


def test_a_cot_that_wrote_the_think_close_in_pieces_is_a_row_from_its_text(setup):
    """The rows from the CoTs' ids took the ids after the thinking as the close tag and the answer: a CoT that wrote
    "</think>" in pieces, the first of them holding the thinking's end, gave a row "...Yes. </</think>..." (and a
    base without the tag's token crashed on a None id). Such a row is its text encoded, as rows were before, and
    counted."""
    import copy

    from tokenizers import AddedToken

    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader
    from stepentropy_rl.tokenizer import encode

    probs, tok, _ = setup
    tok = copy.deepcopy(tok)
    tok.add_tokens([AddedToken(" </", normalized=False)])
    roll = ClosedInPieces(probs)
    roll.tok = tok
    prune = PruneStageConfig(ratio=0.5, keep_verified=True, keep_essential=False, answer_max_tokens=16)
    rows, stats = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                       {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    close = tok.convert_tokens_to_ids("</think>")
    for r in rows:
        assert "</</think>" not in r["response"] and "\n</think>" in r["response"] and "[SKIP]" in r["response"]
        assert r["response_ids"] == encode(tok, r["response"]) and r["response_ids"].count(close) == 1
    assert rows and stats["rows_from_text"] == stats["kept"] == len(rows) and all(r["from_text"] for r in rows)


class StopsOnAnotherEnd(FakeRollout):
    """Stops on a special token other than the tokenizer's EOS (a Qwen3 base lists two end ids), which vLLM keeps in
    ``token_ids`` and leaves out of the text."""

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        for o in out:
            if not o[0]["text"].startswith("The answer"):  # the CoTs, not the answer checks
                o[0]["token_ids"] = o[0]["token_ids"] + [self.tok.pad_token_id]
                o[0]["finish_reason"] = "stop"
        return out


def test_a_row_leaves_out_whatever_end_token_stopped_its_cot(setup):
    """The rows from ids dropped a final EOS only: a CoT stopped on another of the base's end ids kept it, and SFT
    then taught two end tokens."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset, sft_batch
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    assert tok.pad_token_id not in (None, tok.eos_token_id)
    roll = StopsOnAnotherEnd(probs)
    roll.tok = tok
    prune = PruneStageConfig(ratio=0.5, keep_verified=False, keep_essential=False, answer_max_tokens=16)
    rows, _ = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                   {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    assert rows
    for r in rows:
        ids = sft_batch(tok, [r]).response_ids(0)
        assert tok.pad_token_id not in r["response_ids"] and ids[-1] == tok.eos_token_id
        assert r["response"].endswith(".") and "from_text" not in r


def test_the_prune_stage_scores_in_the_configured_chunks(setup):
    """reference.chunk_rows bounds the logits the reference holds at once (1.25 GB a chunk of 2048 rows with R1's
    152k outputs): the prune stage passes it on, as the study does (it used the default)."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll, ref, asked = FakeRollout(probs), FakeReference(tok), []
    roll.tok = tok
    score = ref.score.remote
    ref.score = _Remote(lambda batch, batch_size, chunk_rows: asked.append(chunk_rows) or score(batch))
    build_pruned_dataset(probs, roll, ref, tok, make_grader("exact"), PruneStageConfig(answer_max_tokens=16),
                         {"temperature": 0.6, "top_p": 1.0, "max_tokens": 384}, 4, None, 512)
    assert asked and set(asked) == {512}


def test_the_answer_check_samples_at_the_answer_temperature(setup):
    """rollout.answer_temperature ("regenerating the answer after pruned thinking") was read by the study only: the
    prune stage's check sampled at the CoTs' temperature, and a greedy check (0) changed nothing."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll, asked = FakeRollout(probs), []
    roll.tok = tok
    generate = roll.generate
    roll.generate = lambda prompts, sampling: asked.append(sampling) or generate(prompts, sampling)
    build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"),
                         PruneStageConfig(answer_max_tokens=16), {"temperature": 0.6, "top_p": 1.0, "max_tokens": 384},
                         answer_temperature=0.0)
    assert [s["temperature"] for s in asked] == [0.6, 0.0] and asked[1]["max_tokens"] == 16  # the CoTs, the check


class LoopingRollout(CutAtMaxTokens):
    """Right to the answer and on: R1 looping after its boxed answer."""

    def edit(self, sample):
        sample["text"] += " Wait, the answer is right." * 3


def test_prune_stage_leaves_out_right_cots_cut_at_max_tokens_after_their_answer(setup):
    """Their answer grades right, but as SFT rows they would teach the cut-off text and then EOS."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll = LoopingRollout(probs, [probs[2].id, probs[5].id])
    roll.tok = tok
    prune = PruneStageConfig(source="policy", ratio=0.5, keep_verified=False, keep_essential=False,
                             answer_max_tokens=16)
    rows, stats = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                       {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    assert stats["correct_cots"] == 12 and stats["cut_after_answer"] == 2 and stats["pruned"] == 10 == len(rows)
    assert {probs[2].id, probs[5].id}.isdisjoint(r["id"] for r in rows)
    assert not any("Wait, the answer is right." in r["response"] for r in rows)


class SkipBlindRollout(FakeRollout):
    """A base that has never seen ``[SKIP]``: after one it loses the thread and answers wrong."""

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        for ids, o in zip(prompts, out):
            text = self.tok.decode(ids, skip_special_tokens=False)
            if text.endswith("</think>") and "[SKIP]" in text:
                o[0]["text"] = "The answer isLet me"
        return out


@pytest.mark.parametrize("verify_with", ["deletion", "placeholder"])
def test_the_keep_check_reads_the_pruned_thinking_without_the_placeholder(setup, verify_with, caplog):
    """``trainer.prune.verify_with=deletion`` (the default) asks whether the kept steps still carry the answer, with
    the pruned ones left out; the SFT rows still hold ``[SKIP]``. Checked with the placeholder, a base that cannot
    read it keeps nothing (the verbose tiny reasoner kept 6 of 495)."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll = SkipBlindRollout(probs)
    roll.tok = tok
    prune = PruneStageConfig(ratio=0.5, merge_runs=True, answer_max_tokens=16, verify_with=verify_with)
    rows, stats = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                       {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    if verify_with == "placeholder":
        assert stats["pruned"] == 12 and stats["verified"] == 0 and rows == []
        assert "the answer check failed for 12 of the 12 pruned CoTs" in caplog.text
        return
    assert "the answer check failed" not in caplog.text
    assert 0 < stats["kept"] == len(rows) < stats["pruned"] == 12  # losing an essential step still fails
    for r in rows:
        assert "[SKIP]" in r["response"]


def test_verify_with_is_checked():
    from stepentropy_rl.config import ConfigError, PruneStageConfig

    with pytest.raises(ConfigError, match="verify_with"):
        PruneStageConfig(verify_with="both")


class LeakyRollout(FakeRollout):
    """A base that answers right after any pruned thinking, as the verbose reasoner does where a step restating the
    total survived: the answer check cannot see a lost move."""

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        for ids, o in zip(prompts, out):
            text = self.tok.decode(ids, skip_special_tokens=False)
            if text.endswith("</think>"):
                p = next(p for q, p in self.by_prompt.items() if q in text)
                o[0]["text"] = f"The answer is \\boxed{{{p.answer}}}."
        return out


class LastMoveLow(FakeReference):
    """The last-essential-step effect: in about half the CoTs the last move is the lowest-entropy step (it is forced);
    elsewhere the oracle's 2.0 on every move, 0.1 on the rest."""

    def _score(self, batch, *a):
        out = []
        for ids in (batch.response_ids(i) for i in range(len(batch))):
            text = self.tok.decode(ids)
            last, forced = text.rfind("\n\nNow ") + 2, len(text) % 2 == 1
            ents, pos = [], 0
            for t in ids:
                line_start = text.rfind("\n\n", 0, pos + 1)
                start = line_start + 2 if line_start >= 0 else 0
                step = text[start:].split("\n\n")[0]
                ents.append(0.01 if forced and start == last else 2.0 if step.startswith("Now ") else 0.1)
                pos += len(self.tok.decode([t]))
            out.append(ents)
        return {"entropy": batch.response_column(out), "logprobs": torch.zeros_like(batch.loss_mask)}


@pytest.mark.parametrize("keep_essential", [False, True, None])
def test_the_prune_stage_counts_the_essential_steps_it_lost(setup, caplog, keep_essential):
    """Where a restated total lets the answer check pass, a CoT that lost its last move is kept; on labelled data
    each row counts its lost essential steps, the stats count the rows, a warning names the effect, and
    ``trainer.prune.keep_essential`` (true, or null on labelled data) drops those rows."""
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll = LeakyRollout(probs)
    roll.tok = tok
    prune = PruneStageConfig(ratio=0.2, answer_max_tokens=16, keep_essential=keep_essential)
    with caplog.at_level("WARNING"):
        rows, stats = build_pruned_dataset(probs, roll, LastMoveLow(tok), tok, make_grader("exact"), prune,
                                           {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    by_id = {p.id: p for p in probs}
    lost = {r["id"]: sum(s["text"] not in r["response"] for s in by_id[r["id"]].steps if s["label"] == "essential")
            for r in rows}
    assert all(r["lost_essential"] == lost[r["id"]] for r in rows)
    if keep_essential is not False:
        assert 0 < len(rows) == stats["kept"] < stats["pruned"] == 12 and not any(lost.values())
        assert stats["kept_missing_essential"] == 12 - len(rows) and "essential step" not in caplog.text
    else:
        assert len(rows) == stats["kept"] == 12
        assert 0 < stats["kept_missing_essential"] == sum(map(bool, lost.values())) < 12
        assert "took a labelled essential step out of" in caplog.text


def test_keep_essential_needs_labelled_data(setup):
    import dataclasses

    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset

    probs, tok, _ = setup
    with pytest.raises(ValueError, match="keep_essential needs step labels"):
        build_pruned_dataset([dataclasses.replace(p, steps=[]) for p in probs], None, None, tok, None,
                             PruneStageConfig(keep_essential=True), {})


def test_keep_essential_null_keeps_unlabelled_rows_uncounted(setup):
    """The default (null) drops only what labels show: user data without labels keeps every verified row."""
    import dataclasses

    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    bare = [dataclasses.replace(p, steps=[]) for p in probs]
    roll = LeakyRollout(bare)
    roll.tok = tok
    rows, stats = build_pruned_dataset(bare, roll, LastMoveLow(tok), tok, make_grader("exact"),
                                       PruneStageConfig(ratio=0.2, answer_max_tokens=16),
                                       {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    assert len(rows) == stats["kept"] == 12 and "kept_missing_essential" not in stats
    assert not any("lost_essential" in r for r in rows)


def test_a_placeholder_study_of_the_tiny_reasoner_is_flagged():
    """The tiny base reads [SKIP] as six bytes it never saw and collapses under every strategy: the study warns and
    points at deletion; deletion, and any real model, get no caveat."""
    def job(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            return build(compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x", *overrides]),
                         check_paths=False)

    assert "pruning.placeholder=''" in placeholder_caveat(job())
    assert placeholder_caveat(job("pruning.placeholder=''")) is None
    assert placeholder_caveat(job("model=r1_distill_qwen_7b", "model.path=/m", "data=gsm8k")) is None


class LongAnswers(CutAtMaxTokens):
    """Every answer regenerated after a pruned CoT of ``ids`` runs out of its budget before a box."""

    answers = True

    def edit(self, sample):
        sample.update(text="Let me write the solution out in full first")


def test_cut_cots_and_cut_answers_are_counted_and_warned_about(setup, caplog):
    """A budget too small for the model (R1's solution after </think> past answer_max_tokens) counted as wrong
    without a trace, and read as a pruning effect: each cell now counts them, and the study warns above 2%."""
    probs, tok, cfg = setup
    roll = LongAnswers(probs, [probs[0].id, probs[1].id])
    roll.tok = tok
    with caplog.at_level("WARNING"):
        res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    assert all(r["answer_cut"] == pytest.approx(2 / 12) and r["cot_cut"] == 0 for r in res.summary)
    assert any("of the answers regenerated after" in m and "rollout.answer_max_tokens" in m for m in caplog.messages)
    assert not any("rollout.max_tokens=" in m for m in caplog.messages)
    roll = CutRollout(probs, [probs[3].id])
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    assert all(r["cot_cut"] == pytest.approx(1 / 12) and r["answer_cut"] == 0 for r in res.summary)


def test_the_prune_stage_counts_answer_checks_cut_at_their_budget(setup, caplog):
    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tasks.grading import make_grader

    probs, tok, _ = setup
    roll = LongAnswers(probs, [probs[0].id])
    roll.tok = tok
    prune = PruneStageConfig(source="policy", ratio=0.5, keep_verified=True, answer_max_tokens=16, merge_runs=False)
    with caplog.at_level("WARNING"):
        rows, stats = build_pruned_dataset(probs, roll, FakeReference(tok), tok, make_grader("exact"), prune,
                                           {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384})
    assert stats["verify_cut"] == 1 and probs[0].id not in {r["id"] for r in rows}
    assert any("ran out of trainer.prune.answer_max_tokens=16" in m for m in caplog.messages)


class CutAfterRight(CutAtMaxTokens):
    """Cut at the budget after the work was done: the CoT closed and answered (``answers=False``), or the answer
    boxed the right number (``answers=True``, the text kept)."""

    def edit(self, sample):
        pass


@pytest.mark.parametrize("answers", [False, True])
def test_outputs_cut_after_they_were_right_are_not_counted_as_cut(setup, answers, caplog):
    probs, tok, cfg = setup
    roll = CutAfterRight(probs, [probs[0].id, probs[1].id])
    roll.answers, roll.tok = answers, tok
    with caplog.at_level("WARNING"):
        res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    cut = {probs[0].id, probs[1].id}
    for cell in res.summary:  # cut and wrong: only where pruning took a step the fake answer needs
        rows = [r for r in res.rows if (r["strategy"], r["ratio"]) == (cell["strategy"], cell["ratio"])]
        wrong_cut = sum(answers and r["id"] in cut and not r["correct"] for r in rows)
        assert cell["cot_cut"] == 0 and cell["answer_cut"] == pytest.approx(wrong_cut / len(rows))
    assert all(r["correct"] for r in res.rows if r["ratio"] == 0.0)
    assert all(c["answer_cut"] == 0 for c in res.summary if c["ratio"] == 0.0)
    assert answers or not any("ran out of" in m for m in caplog.messages)


def test_gold_auroc_leaves_out_unlabelled_steps(setup):
    """A gold step without a label is neither redundant nor essential: counted as essential, the oracle's
    low-entropy redundant steps would tie with it and the gold AUROC would fall below 1."""
    import copy

    probs, tok, cfg = setup
    probs = copy.deepcopy(probs)
    unlabelled = 0
    for p in probs[:6]:
        for s in p.steps:
            if s["label"] == "redundant":
                s["label"] = None
                unlabelled += 1
    assert unlabelled > 0
    roll = FakeRollout(probs)
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    assert res.auroc == 1.0


def test_sft_does_not_resume_on_rows_written_as_text(tmp_path):
    """A run whose prune stage finished under the older version (rows as text) resumed SFT on them with a log line:
    the merged newline token before each [SKIP] again, under the same markers and report as a run on the new rows."""
    import json

    from stepentropy_rl.config import ConfigError
    from stepentropy_rl.driver.train import sft_rows

    prune = tmp_path / "prune"
    prune.mkdir()
    ids = {"prompt": "q", "response": "a\\n</think>b", "response_ids": [5, 6, 7]}
    (prune / "sft_data.jsonl").write_text(json.dumps(ids) + "\n")
    assert sft_rows(prune, tmp_path) == [ids]
    (prune / "sft_data.jsonl").write_text(json.dumps(ids) + "\n" + json.dumps({"prompt": "q", "response": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"rows written as text by an older version .*delete .*stages/prune.done"):
        sft_rows(prune, tmp_path)


def test_a_study_killed_before_its_plot_is_not_taken_for_finished(tmp_path, monkeypatch):
    """summary.json says a study job finished (a rerun skips it): written first, a kill before the plot, summary.md
    and the tracker's results left them missing for good."""
    from types import SimpleNamespace

    from stepentropy_rl import report
    from stepentropy_rl.driver import placement, roles, study
    from stepentropy_rl.driver.study import StudyResult, study_pipeline

    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = build(compose("config", overrides=["+experiment=prune_sweep", f"run_dir={tmp_path}",
                                                 "pruning.cache=false", "trainer.logger.wandb=disabled"]))
    monkeypatch.setattr(placement, "reserve_job", lambda cfg, train: SimpleNamespace(release=lambda: None))
    monkeypatch.setattr(roles, "spawn_rollouts", lambda *a: None)
    monkeypatch.setattr(roles, "spawn_reference", lambda *a: None)
    summary = [{"strategy": "low", "ratio": 0.0, "accuracy": 1.0, "accuracy_stderr": 0.0, "thinking_tokens": 3.0,
                "kept_fraction": 1.0, "n": 1}]
    monkeypatch.setattr(study, "run_study", lambda *a: StudyResult([], summary, [], [], 0.9, 0.9, {}))
    job = SimpleNamespace(cfg=cfg, run_dir=tmp_path, model_path=str(tmp_path / "m"), eval_problems=[],
                          tokenizer=None, grade=None)

    def killed(*a):
        raise KeyboardInterrupt("killed while plotting")

    monkeypatch.setattr(report, "plot_accuracy", killed)
    with pytest.raises(KeyboardInterrupt):
        study_pipeline(job)
    assert not (tmp_path / "summary.json").exists()  # so a rerun makes the plot and the rest again

    def broken(*a):
        raise RuntimeError("no display")

    monkeypatch.setattr(report, "plot_accuracy", broken)  # a plot (or tracker) that fails costs the picture only
    study_pipeline(job)
    assert (tmp_path / "summary.json").exists()


def test_the_answer_prompt_is_built_from_the_ids_the_model_wrote(setup):
    """The study encoded the pruned thinking as text: with every step pruned away the prompt ended in two newline
    tokens before </think>, which the model never wrote there (the CoT's own prompt ends '<think>', '\\n'); the prune
    stage builds its prompts from the CoT's ids (pruning.pruned_ids), and so does the study now."""
    probs, tok, _ = setup
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = build(compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x", "pruning.ratio=[0.0,1.0]",
                                                 "pruning.strategy=low", "pruning.placeholder="]))
    roll = FakeRollout(probs)
    roll.tok = tok
    asked = []
    gen = roll.generate
    roll.generate = lambda prompts, sampling: asked.append(list(prompts)) or gen(prompts, sampling)
    run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    cots, regen = asked
    close = tok("</think>", add_special_tokens=False).input_ids
    for p, cot in zip(probs, cots):
        prompt = tok(prompt_text(tok, p), add_special_tokens=False).input_ids
        assert prompt + close in regen  # ratio 1: nothing kept
        n = tok(p.solution, add_special_tokens=False).input_ids.index(close[0])
        assert prompt + tok(p.solution, add_special_tokens=False).input_ids[:n] + close in regen  # ratio 0: all of it
