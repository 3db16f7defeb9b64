"""The rollout worker reads vLLM's flat log-probs as the per-token dicts would give them."""
import random
from types import SimpleNamespace

from vllm.logprobs import FlatLogprobs, Logprob

from workers.rollout import _logprobs


def test_flat_logprobs_read_as_the_per_token_dicts():
    """Sampled token first, then the top-k, the sampled one repeated when it is among them (vLLM's layout): the
    sampled log-prob and the top-k list must equal what the dict per token held (each token once)."""
    rng = random.Random(0)
    flat, dicts, tokens = FlatLogprobs(), [], []
    for _ in range(50):
        top = rng.sample(range(100), 5)
        lps = {t: -rng.random() * 5 for t in top}
        sampled = rng.choice(top) if rng.random() < 0.7 else 100 + rng.randrange(50)
        lps.setdefault(sampled, -7.5)
        entry = {sampled: Logprob(lps[sampled], 1, None), **{t: Logprob(lps[t], r + 1, None) for r, t in enumerate(top)}}
        flat.append_fast([sampled, *top], [lps[sampled], *(lps[t] for t in top)], iter([1, *range(1, 6)]),
                         [None] * 6)
        dicts.append(entry)
        tokens.append(sampled)
    got_sampled, got_topk = _logprobs(SimpleNamespace(logprobs=flat, token_ids=tokens))
    assert got_sampled == [d[t].logprob for t, d in zip(tokens, dicts)]
    assert got_topk == [[lp.logprob for lp in d.values()] for d in dicts]
    assert any(len(k) == 6 for k in got_topk) and any(len(k) == 5 for k in got_topk)  # both cases occur
    assert _logprobs(SimpleNamespace(logprobs=None, token_ids=tokens)) == (None, None)
