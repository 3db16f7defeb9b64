"""The prune stage's CoT cache: a second run with the same model, problems, sampling and engine state reuses the
scored CoTs and samples the rest as the first run did; anything else is a miss."""
import json
import logging
import os

import pytest

from stepentropy_rl.config import PruneStageConfig
from stepentropy_rl.cot_cache import CoTCache, model_fingerprint
from stepentropy_rl.driver.sft import build_pruned_dataset
from stepentropy_rl.tasks.grading import make_grader
from tests.unit.test_prune_study import FakeReference, FakeRollout, study_inputs

SAMPLING = {"temperature": 0.6, "top_p": 0.95, "max_tokens": 384}


@pytest.fixture(scope="module")
def setup():
    return study_inputs()


class SeededRollout(FakeRollout):
    """A fake engine with a sampler state that every sample advances; counts the calls that write CoTs."""

    def __init__(self, problems, tok, state=0):
        super().__init__(problems)
        self.tok, self.state, self.cot_calls = tok, state, 0

    def rng_states(self):
        return [str(self.state)]

    def set_rng_states(self, states):
        self.state = int(states[0])

    def generate(self, prompts, sampling):
        self.state += len(prompts)
        self.cot_calls += not self.tok.decode(prompts[0], skip_special_tokens=False).endswith("</think>")
        return super().generate(prompts, sampling)


class CountingReference(FakeReference):
    def __init__(self, tok):
        super().__init__(tok)
        self.calls, score = 0, self.score.remote

        def counted(*a):
            self.calls += 1
            return score(*a)

        self.score.remote = counted


def prune_stage(setup, rollout, reference, cache, sampling=SAMPLING):
    probs, tok, _ = setup
    prune = PruneStageConfig(source="policy", ratio=0.5, keep_verified=True, answer_max_tokens=16)
    return build_pruned_dataset(probs, rollout, reference, tok, make_grader("exact"), prune, sampling, cache=cache)


def test_a_second_run_reuses_the_scored_cots_and_samples_the_rest_the_same(setup, tmp_path):
    probs, tok, _ = setup
    cache = CoTCache({"model": "m"}, tmp_path)
    first, ref1 = SeededRollout(probs, tok), CountingReference(tok)
    rows1, stats1 = prune_stage(setup, first, ref1, cache)
    assert stats1["cots_cached"] is False and first.cot_calls == 1 and ref1.calls == 1
    assert len(list(tmp_path.glob("*.json.gz"))) == 1

    second, ref2 = SeededRollout(probs, tok), CountingReference(tok)
    rows2, stats2 = prune_stage(setup, second, ref2, cache)
    assert stats2["cots_cached"] is True and second.cot_calls == 0 and ref2.calls == 0  # nothing written or scored
    assert rows2 == rows1 and rows1  # the same SFT data
    assert second.state == first.state  # the answer check sampled from the state the first run's left


@pytest.mark.parametrize("change", ["engine state", "sampling", "model", "GPU"])
def test_another_engine_state_sampling_model_or_gpu_is_a_miss(setup, tmp_path, change):
    """"GPU": the engines' own runtime tag (another GPU kind on a node sharing the cache), not the driver's."""
    probs, tok, _ = setup
    h100 = {"engines": [{"gpu": "NVIDIA H100 80GB HBM3", "cuda": "12.8"}], "reference": {}}
    prune_stage(setup, SeededRollout(probs, tok), FakeReference(tok), CoTCache({"model": "m"}, tmp_path, h100))
    rollout = SeededRollout(probs, tok, state=7 if change == "engine state" else 0)
    sampling = {**SAMPLING, "temperature": 0.7} if change == "sampling" else SAMPLING
    a100 = {"engines": [{"gpu": "NVIDIA A100-SXM4-80GB", "cuda": "12.8"}], "reference": {}}
    cache = CoTCache({"model": "other" if change == "model" else "m"}, tmp_path, a100 if change == "GPU" else h100)
    _, stats = prune_stage(setup, rollout, FakeReference(tok), cache, sampling)
    assert stats["cots_cached"] is False and rollout.cot_calls == 1


@pytest.mark.parametrize("damage", ["cut short", "bytes flipped"])
def test_an_unreadable_entry_is_a_miss_and_is_written_again(setup, tmp_path, caplog, damage):
    probs, tok, _ = setup
    cache = CoTCache({"model": "m"}, tmp_path)
    prune_stage(setup, SeededRollout(probs, tok), FakeReference(tok), cache)
    entry = next(tmp_path.glob("*.json.gz"))
    data = entry.read_bytes()
    if damage == "cut short":
        entry.write_bytes(data[:100])
    else:  # the gzip body corrupted (zlib.error, which the reader raised instead of missing)
        entry.write_bytes(data[:40] + bytes(b ^ 0xFF for b in data[40:80]) + data[80:])
    rollout = SeededRollout(probs, tok)
    with caplog.at_level(logging.WARNING):
        _, stats = prune_stage(setup, rollout, FakeReference(tok), cache)
    assert stats["cots_cached"] is False and rollout.cot_calls == 1 and "unreadable" in caplog.text
    _, stats = prune_stage(setup, SeededRollout(probs, tok), FakeReference(tok), cache)
    assert stats["cots_cached"] is True


def test_without_a_cache_nothing_is_read_or_written(setup, tmp_path):
    probs, tok, _ = setup
    rollout = FakeRollout(probs)  # no sampler state to read: the stage must not ask for one
    rollout.tok = tok
    rows, stats = prune_stage(setup, rollout, FakeReference(tok), None)
    assert rows and "cots_cached" not in stats


def test_the_model_fingerprint_changes_when_a_file_is_rewritten(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"a" * 10)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "notes.md").write_text("not part of the model")
    before = model_fingerprint(str(tmp_path))
    assert [f[0] for f in before[1:]] == ["config.json", "model.safetensors"]
    (tmp_path / "notes.md").write_text("edited")
    assert model_fingerprint(str(tmp_path)) == before
    (tmp_path / "model.safetensors").write_bytes(b"b" * 11)
    resized = model_fingerprint(str(tmp_path))
    assert resized != before
    st = os.stat(tmp_path / "model.safetensors")
    os.utime(tmp_path / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, rewritten
    assert model_fingerprint(str(tmp_path)) != resized


def test_a_study_job_reuses_the_cots_and_entropies_of_an_earlier_job(setup, tmp_path):
    """The static study (a multirun's jobs): the second job writes and scores no CoT (the reference scores only the
    gold solutions for the AUROC), and regenerates the answers from the sampler state the first one did."""
    from stepentropy_rl.driver.study import run_study
    from stepentropy_rl.tasks.grading import exact_match

    probs, tok, cfg = setup
    cache = CoTCache({"model": "m"}, tmp_path)
    first, ref1 = SeededRollout(probs, tok), CountingReference(tok)
    res1 = run_study(cfg, probs, first, ref1, tok, exact_match, cache)
    second, ref2 = SeededRollout(probs, tok), CountingReference(tok)
    res2 = run_study(cfg, probs, second, ref2, tok, exact_match, cache)
    assert (res1.cots_cached, res2.cots_cached) == (False, True)
    assert (first.cot_calls, ref1.calls, second.cot_calls, ref2.calls) == (1, 2, 0, 1)
    assert res2.summary == res1.summary and res2.steps == res1.steps and second.state == first.state


def test_the_study_keeps_the_top_k_entropy_estimate_not_the_log_probs():
    """An entry keeps one float per token for the top-k estimate (20 log-probs a token would be 20 times the size),
    and the study's top-k error is measured from it."""
    import math

    from stepentropy_rl.cot_cache import with_topk_entropy
    from stepentropy_rl.driver.study import topk_error

    sample = {"text": "ab", "token_ids": [1, 2], "finish_reason": "stop", "logprobs": [-0.7, 0.0],
              "topk_logprobs": [[math.log(0.5), math.log(0.5)], [0.0]], "cumulative_logprob": -0.7}
    kept = with_topk_entropy(sample)
    assert set(kept) == {"text", "token_ids", "finish_reason", "topk_entropy"}
    assert kept["topk_entropy"] == pytest.approx([math.log(2), 0.0])
    err = topk_error([kept], [[math.log(2) + 0.1, 0.1]], 2)
    assert err["tokens"] == 2 and err["mae_nats"] == pytest.approx(0.1)


def test_an_entry_with_another_count_of_cots_is_a_miss(setup, tmp_path, caplog):
    import gzip
    import json

    probs, tok, _ = setup
    cache = CoTCache({"model": "m"}, tmp_path)
    prune_stage(setup, SeededRollout(probs, tok), FakeReference(tok), cache)
    path = next(tmp_path.glob("*.json.gz"))
    with gzip.open(path, "rt") as f:
        entry = json.load(f)
    with gzip.open(path, "wt") as f:
        json.dump({**entry, "cots": entry["cots"][:-1]}, f)  # an edited file under the same key
    rollout = SeededRollout(probs, tok)
    with caplog.at_level(logging.WARNING):
        _, stats = prune_stage(setup, rollout, FakeReference(tok), cache)
    assert stats["cots_cached"] is False and rollout.cot_calls == 1 and "11 CoTs, not 12" in caplog.text


def test_a_cache_that_cannot_be_written_costs_the_reuse_not_the_job(setup, tmp_path, caplog):
    probs, tok, _ = setup
    blocked = tmp_path / "cots"
    blocked.write_text("a file where the cache directory would go")
    with caplog.at_level(logging.WARNING):
        rows, stats = prune_stage(setup, SeededRollout(probs, tok), FakeReference(tok), CoTCache({}, blocked))
    assert rows and stats["cots_cached"] is False and "could not keep the scored CoTs" in caplog.text
    assert blocked.read_text().startswith("a file")


class TopkRollout(SeededRollout):
    """Its CoTs carry top-2 log-probs: the evaluation's entropy estimate."""

    def generate(self, prompts, sampling):
        import math

        out = super().generate(prompts, sampling)
        for o in out:
            o[0]["topk_logprobs"] = [[math.log(0.5), math.log(0.5)] if t % 2 else [0.0] for t in o[0]["token_ids"]]
        return out


def test_the_base_evaluation_reuses_an_earlier_jobs_cots_and_their_entropy_estimates(setup, tmp_path):
    """``trainer.eval.cache``: the second evaluation of the same model from the same engine state writes no CoT,
    leaves the engine where the first left it, and reports the same to the digit, the saved CoTs' top-k entropies
    included; another engine state is a miss."""
    from stepentropy_rl.driver.evaluate import evaluate

    probs, tok, _ = setup
    cache, sampling = CoTCache({"model": "m"}, tmp_path), {**SAMPLING, "logprobs": 2}
    runs = []
    for state in (0, 0, 5):
        rollout = TopkRollout(probs, tok, state)
        res = evaluate(rollout, tok, probs, make_grader("exact"), sampling, cots=True, cache=cache)
        runs.append((res.pop("cots_cached"), rollout.cot_calls, rollout.state, res))
    (hit1, calls1, state1, res1), (hit2, calls2, state2, res2), (hit3, calls3, _, res3) = runs
    assert (hit1, calls1, hit2, calls2, hit3, calls3) == (False, 1, True, 0, False, 1)
    assert state2 == state1 == len(probs) and res2 == res1 == res3
    assert res1["accuracy"] > 0 and res1["cots"][0]["entropy_source"] == "vLLM top-2 log-probs"
    assert {s["entropy"] for s in res1["cots"][0]["steps"]} - {0.0}  # the estimate reached the steps
    assert len(list(tmp_path.glob("*.json.gz"))) == 2


def test_a_run_dir_resumed_with_another_base_is_refused(tmp_path):
    """init.done records the base's fingerprint; a rerun whose base is another model (or was rewritten in place)
    would mix two models in one run and cache the old one's CoTs under the new one's key."""
    import json

    from stepentropy_rl.config import ConfigError
    from stepentropy_rl.driver.train import check_same_base

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"x" * 8)
    recorded = json.loads(json.dumps({"base": str(base), "fingerprint": model_fingerprint(str(base))}))
    check_same_base(recorded, str(base), tmp_path)  # the same files: resumes
    check_same_base({"base": str(base)}, str(base), tmp_path)  # a marker from before fingerprints: passes
    (base / "model.safetensors").write_bytes(b"y" * 16)  # new weights in place
    with pytest.raises(ConfigError, match="was started from the base .* is another model"):
        check_same_base(recorded, str(base), tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match="give the job a new run_dir"):
        check_same_base(recorded, str(other), tmp_path)


class PrefixCachingRollout(SeededRollout):
    """A fake engine whose answers after pruned thinking depend on whether it still holds the CoTs' prefixes, as a
    real engine's batching, and so its random draws, do."""

    warm, resets = False, 0

    def reset_prefix_cache(self):
        self.warm, self.resets = False, self.resets + 1

    def generate(self, prompts, sampling):
        out = super().generate(prompts, sampling)
        if self.tok.decode(prompts[0], skip_special_tokens=False).endswith("</think>") and self.warm:
            for o in out:
                o[0]["text"] = "The answer is \\boxed{-1}."
        self.warm = True
        return out


@pytest.mark.parametrize("with_cache", [True, False])
def test_writing_the_cots_leaves_the_engines_as_reading_them_does(setup, tmp_path, with_cache):
    """The engines drop their prefix cache after writing CoTs: what they sample next is then the same whether the
    CoTs were written or read (without it the answer check here fails every row when written)."""
    probs, tok, _ = setup
    cache = CoTCache({"model": "m"}, tmp_path) if with_cache else None
    writer = PrefixCachingRollout(probs, tok)
    rows_written, stats = prune_stage(setup, writer, FakeReference(tok), cache)
    assert writer.resets == 1 and rows_written
    if with_cache:
        rows_read, stats = prune_stage(setup, PrefixCachingRollout(probs, tok), FakeReference(tok), cache)
        assert stats["cots_cached"] is True and rows_read == rows_written


def test_two_init_models_differing_only_in_the_skip_row_are_two_models_to_the_cache(tmp_path):
    """The key held the base's files and the words 'with [SKIP] added': when the [SKIP] row's start changed (to the
    mean row), entries written from the old init were read as the new init's CoTs."""
    import torch
    from safetensors.torch import save_file

    from stepentropy_rl.cot_cache import added_rows_digest

    def init(name, skip_row):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"vocab_size": 4}))
        emb = torch.arange(8, dtype=torch.float32).reshape(4, 2)
        emb[3] = torch.tensor(skip_row)
        save_file({"model.embed_tokens.weight": emb.to(torch.bfloat16), "model.norm.weight": torch.ones(2)},
                  str(d / "model.safetensors"))
        return d

    zero, mean = init("zero", [0.0, 0.0]), init("mean", [2.0, 3.0])
    assert added_rows_digest(zero, [3]) != added_rows_digest(mean, [3])
    assert added_rows_digest(zero, [3]) == added_rows_digest(init("zero2", [0.0, 0.0]), [3])
    assert added_rows_digest(zero, [2]) == added_rows_digest(mean, [2])  # the base's own rows agree
