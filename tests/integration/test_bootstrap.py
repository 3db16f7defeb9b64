import json

import pytest

from stepentropy_rl import bootstrap
from stepentropy_rl.bootstrap import TinyConfig, ensure_tiny_model
from stepentropy_rl.tasks.basket import BasketConfig

MICRO = dict(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64, train_examples=200, steps=3,
             batch_size=4, vocab_size=300)


def test_cache_key_depends_on_every_setting():
    assert TinyConfig().key() == TinyConfig().key()
    assert TinyConfig(steps=5).key() != TinyConfig().key()
    assert TinyConfig(task=BasketConfig(redundancy=0.1)).key() != TinyConfig().key()
    assert TinyConfig(essential_weight=2.0).key() != TinyConfig().key()


def test_the_recipe_follows_the_task_style():
    """Unset steps / essential_weight take the recipe measured for the style; a set value wins."""
    terse, verbose = TinyConfig().resolved(), TinyConfig(task=BasketConfig(style="verbose")).resolved()
    assert (terse.steps, terse.essential_weight) == (1100, 1.0) and (verbose.steps, verbose.essential_weight) == (700, 4.0)
    assert TinyConfig(steps=5, task=BasketConfig(style="verbose")).resolved().steps == 5
    assert TinyConfig().resolved().key() == TinyConfig(steps=1100, essential_weight=1.0).resolved().key()


def test_cache_key_follows_the_task_wording(monkeypatch):
    """A reworded step is a new model even though no config value moved (a stale cache once served the old text)."""
    from stepentropy_rl.tasks import basket

    before = TinyConfig().key()
    monkeypatch.setattr(basket, "answer_sentence", lambda answer: f"So the answer is \\boxed{{{answer}}}.")
    assert TinyConfig().key() != before


def test_bootstrap_trains_once_then_reuses_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPENTROPY_CACHE", str(tmp_path))
    cfg = TinyConfig(**MICRO)
    path = ensure_tiny_model(cfg, progress=False)
    assert (path / "DONE").exists() and path.parent == tmp_path
    stats = json.loads((path / "bootstrap.json").read_text())
    assert stats["config"]["steps"] == 3 and stats["bootstrap_s"] > 0

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")

    monkeypatch.setattr(bootstrap, "train_tiny_model", lambda *a, **k: pytest.fail("retrained a cached model"))
    assert ensure_tiny_model(cfg, progress=False) == path
