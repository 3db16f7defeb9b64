"""vLLM and transformers agree on the tiny reasoner: same token ids, same log-probs (one engine for the module)."""
import pytest

from stepentropy_rl.tasks.basket import BasketConfig, generate
from stepentropy_rl.tokenizer import prompt_text

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def skip_model(micro_model, tmp_path_factory):
    """The micro reasoner with [SKIP] added as a normal token (as SFT will serve it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepentropy_rl.pruning import add_skip_token

    out = tmp_path_factory.mktemp("skip_model")
    tok, model = AutoTokenizer.from_pretrained(micro_model), AutoModelForCausalLM.from_pretrained(micro_model)
    add_skip_token(tok, model)
    tok.save_pretrained(out)
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def engine(skip_model):
    from workers.rollout import Rollout

    # processed log-probs: of the distribution that sampled (after temperature), to check the learners against
    return Rollout(skip_model, {"dtype": "float32", "max_model_len": 512, "enforce_eager": True,
                                "logprobs_mode": "processed_logprobs"})


def test_skip_token_served_by_vllm_with_matching_vocab(engine, skip_model):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(skip_model)
    vocab = engine.llm.llm_engine.model_config.get_vocab_size()
    assert vocab == AutoConfig.from_pretrained(skip_model).vocab_size >= len(tok)
    text = "Now Ann puts in 3: 2 + 3 = 5.\n\n[SKIP]\n\nCheck: 2 + 3 = 5. Correct."
    ids = tok(text, add_special_tokens=False).input_ids
    assert engine.tokenizer(text, add_special_tokens=False).input_ids == ids
    assert ids.count(tok.convert_tokens_to_ids("[SKIP]")) == 1
    out = engine.generate([ids], {"temperature": 0.0, "max_tokens": 4, "skip_special_tokens": True})
    assert out[0][0]["token_ids"]  # generation runs over a prompt holding the new token


def test_vllm_and_transformers_same_ids_and_logprobs(engine, skip_model):
    from transformers import AutoTokenizer

    from workers.reference import Reference

    tok = AutoTokenizer.from_pretrained(skip_model)
    probs = generate(BasketConfig(), 4, 0, "test")
    prompts = [prompt_text(tok, p.prompt) for p in probs]
    for p in prompts:
        assert engine.tokenizer(p, add_special_tokens=False).input_ids == tok(p, add_special_tokens=False).input_ids
    pids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    outs = engine.generate(pids, {"temperature": 1.0, "max_tokens": 24, "logprobs": 0,
                                  "skip_special_tokens": False})
    ref = Reference(skip_model)
    scored = _score(ref, pids, [o[0]["token_ids"] for o in outs])
    for o, s in zip(outs, scored):
        assert len(s["entropy"]) == len(o[0]["token_ids"]) > 0
        assert all(e >= 0 for e in s["entropy"])
        assert abs(sum(s["logprobs"]) - o[0]["cumulative_logprob"]) < 1e-2 * len(s["logprobs"])


def test_weights_loaded_from_a_directory_without_restart_match_transformers(engine, skip_model, tmp_path):
    """The eval path: the running engine reads a checkpoint directory itself (no blob through the driver) and
    gives the new model's log-probs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.reference import Reference

    model = AutoModelForCausalLM.from_pretrained(skip_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p += 0.05 * torch.randn(p.shape, generator=gen)
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(skip_model).save_pretrained(tmp_path)
    assert engine.load_weights_from(str(tmp_path)) == str(tmp_path)

    tok = AutoTokenizer.from_pretrained(skip_model)
    prompts = [prompt_text(tok, p.prompt) for p in generate(BasketConfig(), 3, 1, "test")]
    pids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    outs = engine.generate(pids, {"temperature": 1.0, "max_tokens": 16, "logprobs": 0, "skip_special_tokens": False})
    new = _score(Reference(str(tmp_path)), pids, [o[0]["token_ids"] for o in outs])
    old = _score(Reference(skip_model), pids, [o[0]["token_ids"] for o in outs])
    for o, n, b in zip(outs, new, old):
        got = o[0]["logprobs"]
        assert max(abs(x - y) for x, y in zip(got, n["logprobs"])) < 1e-3
        assert max(abs(x - y) for x, y in zip(got, b["logprobs"])) > 1e-2  # the old weights are really gone


def test_scoring_at_the_sampling_temperature_matches_vllm(engine, skip_model):
    """Samples drawn at T=0.6: the reference (and the learners, tests/test_learner.py) score them under
    softmax(logits / 0.6), which is what vLLM sampled from; scoring at T=1 would not match."""
    from transformers import AutoTokenizer

    from workers.reference import Reference

    engine.load_weights_from(skip_model)  # an earlier test of this module loaded other weights
    tok = AutoTokenizer.from_pretrained(skip_model)
    pids = [tok(prompt_text(tok, p.prompt), add_special_tokens=False).input_ids
            for p in generate(BasketConfig(), 4, 2, "test")]
    outs = engine.generate(pids, {"temperature": 0.6, "top_p": 1.0, "max_tokens": 24, "logprobs": 0,
                                  "skip_special_tokens": False})
    ref = Reference(skip_model)
    at_t = _score(ref, pids, [o[0]["token_ids"] for o in outs], temperature=0.6)
    at_1 = _score(ref, pids, [o[0]["token_ids"] for o in outs])
    for o, a, b in zip(outs, at_t, at_1):
        got = o[0]["logprobs"]
        assert max(abs(x - y) for x, y in zip(got, a["logprobs"])) < 1e-3
        assert max(abs(x - y) for x, y in zip(got, b["logprobs"])) > 1e-2


def test_engines_take_ids_not_text(engine):
    with pytest.raises(TypeError, match="token ids"):
        engine.generate(["a text prompt"], {"max_tokens": 2})


def test_text_is_what_vllm_detokenizes(engine):
    """Samples' text is decoded by the project's tokenizer from the ids; it matches vLLM's own detokenization, which
    leaves out the EOS that ended a sample (the id stays in token_ids)."""
    from vllm import SamplingParams

    tok = engine.tokenizer
    pids = [tok(prompt_text(tok, p.prompt), add_special_tokens=False).input_ids
            for p in generate(BasketConfig(), 8, 4, "test")]
    ours = engine.generate(pids, {"temperature": 0.0, "max_tokens": 96, "skip_special_tokens": False})
    theirs = engine.llm.generate([{"prompt_token_ids": p} for p in pids],
                                 SamplingParams(temperature=0.0, max_tokens=96, skip_special_tokens=False),
                                 use_tqdm=False)
    stopped = 0
    for o, t in zip(ours, theirs):
        assert o[0]["text"] == t.outputs[0].text and o[0]["token_ids"] == list(t.outputs[0].token_ids)
        stopped += o[0]["finish_reason"] == "stop" and o[0]["token_ids"][-1] == tok.eos_token_id
    assert stopped > 0  # the case that matters: a sample that ended on EOS


def _score(reference, prompts, responses, temperature=1.0) -> list[dict]:
    """The reference's columns for these pairs, cut back into per-response ``{entropy, logprobs}`` lists."""
    from stepentropy_rl.batch import Batch

    batch = Batch.from_pairs(prompts, responses, pad_id=0)
    cols = batch.union(reference.score(batch, temperature=temperature))
    ent, lp = cols.per_response("entropy"), cols.per_response("logprobs")
    return [{"entropy": e.tolist(), "logprobs": lp_i.tolist()} for e, lp_i in zip(ent, lp)]


def test_a_cached_prune_stage_leaves_the_engine_where_writing_the_cots_did(engine, skip_model, tmp_path):
    """vLLM's own sampling: a second prune stage on the same engine state reads the CoTs and their entropies from
    the cache, restores the sampler state that writing them left, and its answer check then samples from there: the
    same SFT rows and the same sampler state after, as in the run that wrote the entry."""
    import base64

    from stepentropy_rl.config import PruneStageConfig
    from stepentropy_rl.cot_cache import CoTCache
    from stepentropy_rl.data import generated
    from stepentropy_rl.driver.sft import build_pruned_dataset
    from stepentropy_rl.tokenizer import load_tokenizer
    from workers.reference import Reference

    class Scoring:  # the actor handle's .score.remote, in process
        def __init__(self, ref):
            self.score = type("Remote", (), {"remote": staticmethod(ref.score)})

    class Group:  # the RolloutGroup calls the prune stage makes, on the module's in-process engine
        generate = staticmethod(engine.generate)

        @staticmethod
        def rng_states():
            return [base64.b64encode(engine.rng_state()).decode()]

        @staticmethod
        def set_rng_states(states):
            engine.set_rng_state(base64.b64decode(states[0]))

    engine.load_weights_from(skip_model)
    tok, ref = load_tokenizer(skip_model), Scoring(Reference(skip_model))
    probs = generated(BasketConfig(), 8, 3, "train")
    prune = PruneStageConfig(ratio=0.5, keep_essential=False, answer_max_tokens=8)
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 96}
    cache, start = CoTCache({"model": "micro"}, tmp_path), Group.rng_states()
    runs = []
    for _ in range(2):
        Group.set_rng_states(start)
        rows, stats = build_pruned_dataset(probs, Group, ref, tok, lambda r, a: True, prune, sampling, cache=cache)
        runs.append((rows, stats["cots_cached"], Group.rng_states()))
    (rows1, cached1, after1), (rows2, cached2, after2) = runs
    assert (cached1, cached2) == (False, True) and rows1  # the micro model closes </think> in about half its CoTs
    assert rows2 == rows1 and after2 == after1 != start
