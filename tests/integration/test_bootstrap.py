import json

import pytest

from stepentropy_rl import bootstrap
from stepentropy_rl.tasks.basket import BasketConfig
from stepentropy_rl.tiny_config import TinyConfig, ensure_tiny_model

MICRO = dict(hidden_size=64, num_layers=1, num_heads=1, intermediate_size=64, train_examples=200, steps=3,
             batch_size=4, vocab_size=300)


def test_cache_key_depends_on_every_setting():
    assert TinyConfig().key() == TinyConfig().key()
    assert TinyConfig(steps=5).key() != TinyConfig().key()
    assert TinyConfig(task=BasketConfig(redundancy=0.1)).key() != TinyConfig().key()
    assert TinyConfig(essential_weight=2.0).key() != TinyConfig().key()
    assert TinyConfig(pruned_reading=0.1).key() != TinyConfig().key()
    assert TinyConfig(reread_weight=4.0).key() != TinyConfig().key()
    assert TinyConfig(reread_weight=1.0).resolved().key() == TinyConfig().resolved().key()
    assert TinyConfig(compile=True).resolved().key() != TinyConfig(compile=False).resolved().key()
    assert TinyConfig(fp32_head=True).key() != TinyConfig().key() == TinyConfig(fp32_head=False).key()
    assert TinyConfig(bf16=False, fp32_head=True).key() == TinyConfig(bf16=False).key()  # trains the same model
    for knob, on in (("move_openers", 2), ("move_endings", 2), ("quantity_first", 0.5)):
        assert TinyConfig(task=BasketConfig(**{knob: on})).key() != TinyConfig().key()
    verbose = BasketConfig(style="verbose")
    assert TinyConfig(task=BasketConfig(style="verbose", recap_openers=2)).key() != TinyConfig(task=verbose).key()
    assert TinyConfig(stable_steps=400).key() != TinyConfig().key() == TinyConfig(stable_steps=0).key()
    assert TinyConfig(init_std=0.06).key() != TinyConfig().key() == TinyConfig(init_std=0.02).key()
    assert TinyConfig(task=verbose, init_std=0.02).resolved().key() != TinyConfig(task=verbose).resolved().key()
    # a recipe without pruned reading, compile or reread weight hashes as before the knobs existed (cached models)
    assert TinyConfig(bf16=True).resolved().key() == "10b7f01db633"
    assert TinyConfig(bf16=False).resolved().key() != "10b7f01db633"


def test_the_initial_std_reaches_the_weights_and_must_be_positive():
    """``init_std`` is the std the model's weights are drawn with (null: the recipe's, terse Llama's 0.02, verbose
    0.06); 0 or less is refused."""
    for std in (0.02, 0.2):
        model = bootstrap.build_model(TinyConfig(**MICRO, init_std=std).resolved(), 300)
        assert model.config.initializer_range == std
        weight = model.model.layers[0].mlp.up_proj.weight
        assert abs(float(weight.std()) - std) < 0.1 * std
    for bad in (0.0, -0.02):
        with pytest.raises(ValueError, match="init_std"):
            TinyConfig(init_std=bad)


def test_bf16_follows_the_cpu_unless_set(monkeypatch):
    """Unset, bf16 autocast is on where the CPU has AVX-512 and off on AVX2 only, where PyTorch emulates it (a
    bootstrap step 17x slower); the resolved value is in the cache key, so each precision has its own model."""
    import torch

    from stepentropy_rl import tiny_config

    torch_says = any(getattr(torch.cpu, name, lambda: False)()
                     for name in ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    assert tiny_config.fast_bf16() is torch_says  # read from /proc/cpuinfo here; torch's own check agrees
    for has_avx512 in (True, False):
        monkeypatch.setattr(tiny_config, "fast_bf16", lambda: has_avx512)
        assert TinyConfig().resolved().bf16 is has_avx512
        assert TinyConfig(bf16=not has_avx512).resolved().bf16 is (not has_avx512)
        assert TinyConfig().resolved().key() == TinyConfig(bf16=has_avx512).resolved().key()


def test_fp32_head_computes_the_logits_in_fp32_under_autocast_and_comes_back():
    import torch

    model = bootstrap.build_model(TinyConfig(**MICRO).resolved(), 300)
    ids = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(0))

    def logits():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids).logits

    low = logits()
    with bootstrap.fp32_head(model):
        high = logits()
    assert low.dtype == torch.bfloat16 and high.dtype == torch.float32
    assert not torch.equal(high, low.float()) and torch.allclose(high, low.float(), atol=0.05, rtol=0.02)
    assert "forward" not in vars(model.lm_head) and logits().dtype == torch.bfloat16  # the head's own forward again
    with bootstrap.fp32_head(model, on=False):
        assert logits().dtype == torch.bfloat16
    with bootstrap.fp32_head(model), bootstrap.fp32_head(model):  # nested: each puts back what it found
        assert logits().dtype == torch.float32
    assert "forward" not in vars(model.lm_head)
    with pytest.raises(ValueError, match="fp32_head must be true, false or null"):
        TinyConfig(fp32_head="yes")


def test_the_bootstrap_trains_with_the_fp32_head_only_under_bf16(tmp_path):
    """model.tiny.fp32_head reaches the training step: under bf16 the weights come out other than without it; in
    fp32 training it changes nothing."""
    weights = {}
    for bf16 in (True, False):
        for head in (False, True):
            out = tmp_path / f"{bf16}-{head}"
            bootstrap.train_tiny_model(TinyConfig(**MICRO, bf16=bf16, fp32_head=head), out, progress=False)
            weights[bf16, head] = (out / "model.safetensors").read_bytes()
    assert weights[True, False] != weights[True, True]
    assert weights[False, False] == weights[False, True]


def test_the_probes_read_a_trained_model_and_leave_its_attention_as_it_was(tmp_path):
    from transformers import AutoModelForCausalLM

    from stepentropy_rl.probes import name_shares, person_attention
    from stepentropy_rl.tokenizer import load_tokenizer

    task = BasketConfig(style="verbose")
    bootstrap.train_tiny_model(TinyConfig(**MICRO, task=task, bf16=False, compile=False), tmp_path, progress=False)
    model, tok = AutoModelForCausalLM.from_pretrained(tmp_path).eval(), load_tokenizer(tmp_path)
    problems = bootstrap.held_out_lookups(task, 8)
    was = model.config._attn_implementation
    attention = person_attention(model, tok, problems)
    assert len(attention) == MICRO["num_layers"] and len(attention[0]) == MICRO["num_heads"]
    assert all(0.0 <= v <= 1.0 for layer in attention for v in layer)
    assert model.config._attn_implementation == was
    shares = name_shares(bootstrap.teacher_forced(model, tok, problems))
    assert 3 <= len(shares) <= 4 and all(0.0 <= v <= 1.0 for v in shares)


def test_the_recipe_follows_the_task_style():
    """Unset recipe values take the recipe measured for the style; a set value wins."""
    # bf16 set: without AVX-512 it resolves false, and the head with it (fp32 training: the same model)
    terse = TinyConfig(bf16=True).resolved()
    verbose = TinyConfig(task=BasketConfig(style="verbose"), bf16=True).resolved()
    assert TinyConfig(task=BasketConfig(style="verbose"), bf16=False).resolved().fp32_head is False
    recipe = ("steps", "warmup_steps", "essential_weight", "reread_weight", "compile", "num_heads", "pruned_reading",
              "fp32_head", "stable_steps", "init_std")
    assert tuple(getattr(terse, k) for k in recipe) == (1100, 30, 1.0, 1.0, False, 3, 0.0, False, 0, 0.02)
    assert tuple(getattr(verbose, k) for k in recipe) == (500, 100, 6.0, 8.0, True, 6, 0.05, True, 0, 0.06)
    # the verbose default is another model than the same recipe with the head in bf16 (its base until 2026-12-06)
    style = BasketConfig(style="verbose")
    assert (TinyConfig(task=style, bf16=True).resolved().key()
            != TinyConfig(task=style, bf16=True, fp32_head=False).resolved().key())
    assert TinyConfig(warmup_steps=0, task=BasketConfig(style="verbose")).resolved().warmup_steps == 0


def test_the_recipes_warmup_fits_a_short_run_and_a_longer_one_is_refused():
    """A run of fewer steps than the recipe's warmup (the tests' micro bootstraps) warms up over a quarter of them,
    where the learning rate would otherwise never reach lr nor decay; a warmup set past the steps is refused."""
    verbose = BasketConfig(style="verbose")
    assert TinyConfig(steps=40, task=verbose).resolved().warmup_steps == 10
    assert TinyConfig(steps=6, task=verbose).resolved().warmup_steps == 1
    assert TinyConfig(steps=6, warmup_steps=6, task=verbose).resolved().warmup_steps == 6
    with pytest.raises(ValueError, match=r"warmup_steps \(100\) must be <= steps \(40\)"):
        TinyConfig(steps=40, warmup_steps=100, task=verbose).resolved()
    assert TinyConfig(stable_steps=400, task=verbose).resolved().stable_steps == 400
    held_too_long = r"stable_steps \(401\) \+ warmup_steps \(100; null: the verbose recipe's\) must be <= steps \(500\)"
    with pytest.raises(ValueError, match=held_too_long):
        TinyConfig(stable_steps=401, task=verbose).resolved()
    with pytest.raises(ValueError, match=r"\(10; null: the verbose recipe's 100, cut to a quarter of the steps\)"):
        TinyConfig(steps=40, stable_steps=35, task=verbose).resolved()
    with pytest.raises(ValueError, match="stable_steps"):
        TinyConfig(stable_steps=-1)
    assert TinyConfig(steps=5, num_heads=2, task=BasketConfig(style="verbose")).resolved().steps == 5
    assert TinyConfig(num_heads=2, task=BasketConfig(style="verbose")).resolved().num_heads == 2
    assert TinyConfig().resolved().key() == TinyConfig(steps=1100, essential_weight=1.0, num_heads=3).resolved().key()


def test_the_learning_rate_warms_up_holds_then_decays():
    """Linear warmup, ``stable`` steps at the peak, cosine down to 0.1 at the last step; without a hold, the schedule
    every cached model was trained on."""
    import math
    f = bootstrap.lr_factor
    assert [f(s, 100, 400, 800) for s in (0, 99, 100, 499)] == [0.01, 1.0, 1.0, 1.0]
    assert f(500, 100, 400, 800) == 1.0 and f(650, 100, 400, 800) == pytest.approx(0.55)
    assert f(800, 100, 400, 800) == pytest.approx(0.1) and f(700, 100, 400, 800) < f(600, 100, 400, 800)
    for step in (100, 300, 799):
        before = 0.1 + 0.45 * (1 + math.cos(math.pi * (step - 100) / 700))
        assert f(step, 100, 0, 800) == pytest.approx(before)


def test_the_bootstrap_schedules_the_hold(tmp_path, monkeypatch):
    """``stable_steps`` reaches the scheduler of a training run (not only the config)."""
    seen = set()
    real = bootstrap.lr_factor

    def spy(step, warmup, stable, steps):
        seen.add((warmup, stable, steps))
        return real(step, warmup, stable, steps)

    monkeypatch.setattr(bootstrap, "lr_factor", spy)
    bootstrap.train_tiny_model(TinyConfig(**MICRO, stable_steps=2, bf16=False), tmp_path, progress=False)
    assert seen == {(0, 2, 3)}  # the recipe's warmup of 30, cut to a quarter of 3 steps


def test_deterministic_kernels_are_on_inside_and_the_flags_come_back():
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with bootstrap.deterministic():
            assert torch.are_deterministic_algorithms_enabled()
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a user's warn_only survives
    finally:
        torch.use_deterministic_algorithms(False)
    with bootstrap.deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_a_compiled_bootstrap_trains_the_same_model_twice(tmp_path):
    """Compiled on every core, the bootstrap's parallel reductions were summed in another order on each run: two
    bootstraps of one recipe were two models (8 steps of the default: two runs, two models), and the README's
    figures held for one draw. ``bootstrap.deterministic`` makes the compiled training deterministic."""
    cfg = TinyConfig(**{**MICRO, "steps": 6, "batch_size": 16, "hidden_size": 128, "num_heads": 2,
                        "intermediate_size": 256}, task=BasketConfig(style="verbose"), compile=True, bf16=False)
    for run in ("a", "b"):
        bootstrap.train_tiny_model(cfg, tmp_path / run, progress=False)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_the_default_config_trains_the_measured_reasoner():
    """``+experiment=entropy_guided`` with no override resolves to the six-head verbose recipe of 500 steps with its
    logits in fp32, its weights drawn at 0.06, two recap openers and two or three people, whose figures the README
    gives; the 3-4 person variant's overrides (the default until 2026-12-07) train the base that
    ``docs/measurements_2026_12_07_four_people.md`` measured (cache keys, bf16 as on the CPU that measured them)."""
    import dataclasses
    import os

    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "conf")
    variant = ["data.task.min_people=3", "data.task.max_people=4", "model.tiny.steps=800"]
    tinies = []
    with initialize_config_dir(config_dir=conf, version_base=None):
        for overrides in ([], variant):
            job = build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides]),
                        check_paths=False)
            tinies.append(dataclasses.replace(job.model.tiny, task=job.data.task, bf16=True).resolved())
    tiny, four = tinies
    assert (tiny.num_heads, tiny.steps, tiny.warmup_steps, tiny.compile, tiny.task.quantity_first, tiny.fp32_head,
            tiny.init_std, tiny.task.recap_openers, tiny.task.min_people, tiny.task.max_people) == (
        6, 500, 100, True, 0.5, True, 0.06, 2, 2, 3)
    assert tiny.key() == "9d8df1a6460c"
    assert (four.steps, four.task.min_people, four.task.max_people) == (800, 3, 4) and four.key() == "f66340b4a0a0"


@pytest.mark.parametrize("bad", [dict(num_heads=5), dict(num_heads=0), dict(hidden_size=100, num_heads=3)])
def test_heads_must_divide_the_hidden_size(bad):
    with pytest.raises(ValueError, match="num_heads"):
        TinyConfig(**bad)


def test_batches_come_from_fewer_examples_than_a_pool_and_stay_whole_and_distinct():
    import random

    from stepentropy_rl.bootstrap import _length_bucketed

    data = [([i], [0] * (i % 7)) for i in range(100)]  # 3 batches of 32, where a pool wants 16
    batches = _length_bucketed(data, 32, random.Random(0))
    for _ in range(5):
        batch = next(batches)
        assert len(batch) == 32 and len({row[0][0] for row in batch}) == 32
    big = [([i], [0] * (i % 7)) for i in range(1000)]  # enough for a pool: the batches the recipes were measured on
    pooled, rng = _length_bucketed(big, 32, random.Random(0)), random.Random(0)
    sample = sorted(rng.sample(big, 32 * 16), key=lambda row: len(row[0]) + len(row[1]))
    first = [sample[i: i + 32] for i in range(0, len(sample), 32)]
    rng.shuffle(first)
    assert [next(pooled) for _ in range(16)] == first


def test_compiled_training_step_matches_eager():
    """``model.tiny.compile``: the inductor-compiled forward gives the eager loss and gradients up to float rounding
    (it trains another model only through that rounding), for two sequence lengths with one compiled graph."""
    import torch

    from stepentropy_rl.batch import Batch

    cfg = TinyConfig(**MICRO).resolved()
    model = bootstrap.build_model(cfg, 300)
    model.set_attn_implementation("eager")
    compiled = bootstrap._compiled(model)
    for width in (7, 11):
        prompts, responses = [[1, 2, 3]] * 2, [list(range(5, 5 + width)), list(range(9, 9 + width - 2))]
        mb = Batch.from_pairs(prompts, responses, pad_id=0)
        weight = mb.loss_mask * 4.0
        grads = []
        for forward in (model, compiled):
            loss = bootstrap._loss(forward, mb, weight, bf16=False)
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
            model.zero_grad(set_to_none=True)
        (eager_loss, eager_grads), (compiled_loss, compiled_grads) = grads
        assert torch.allclose(eager_loss, compiled_loss, rtol=1e-4)
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(eager_grads, compiled_grads))


def test_compile_without_a_cpp_compiler_says_what_to_do(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="model.tiny.compile=false"):
        bootstrap._compiled(object())


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
    assert 0 <= stats["lookup_accuracy"] <= 1 and 0.6 < stats["chance_lookup_accuracy"] < 0.75
    copies = stats["copy_accuracy"]
    assert set(copies) >= {"restate", "verify"} and all(0 <= v <= 1 for v in copies.values())

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size % 64 == 0 and model.config.vocab_size >= len(tok)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")

    monkeypatch.setattr(bootstrap, "train_tiny_model", lambda *a, **k: pytest.fail("retrained a cached model"))
    assert ensure_tiny_model(cfg, progress=False) == path


def test_pruned_reading_trains_the_answer_after_a_pruned_cot_only():
    """A share ``pruned_reading`` of the examples keeps every essential step but only some redundant ones, and only
    the answer after </think> carries loss (the model reads such CoTs but is not taught to write them); the other
    examples are what the recipe without it trains on, token for token."""
    from stepentropy_rl.bootstrap import _encode, prompt_text_raw
    from stepentropy_rl.tasks.basket import generate
    from stepentropy_rl.tokenizer import train_tokenizer

    problems = generate(BasketConfig(style="verbose", redundancy=0.7), 300, 0)
    tok = train_tokenizer([prompt_text_raw(p) for p in problems], 300, whole_numbers=100)
    plain, mixed = _encode(tok, problems, 4.0), _encode(tok, problems, 4.0, pruned_reading=0.3, seed=1)
    read = [i for i, (a, b) in enumerate(zip(plain, mixed)) if a != b]
    assert 60 < len(read) < 120
    for i in read:
        _, response, weight = mixed[i]
        text = tok.decode(response)
        thinking, answer = text.split("</think>")
        assert [s.text for s in problems[i].steps if s.label == "essential"] == [
            line for line in thinking.strip().split("\n\n") if line.startswith("Now ")]
        assert tok.decode([t for t, w in zip(response, weight) if w]) == answer
        assert set(weight) == {0.0, 1.0}
    assert sum(len(mixed[i][1]) for i in read) < sum(len(plain[i][1]) for i in read)
    with pytest.raises(ValueError, match="pruned_reading"):
        TinyConfig(pruned_reading=1.0)


def test_reread_weight_weights_the_rereads_but_their_first_token():
    """``reread_weight`` puts its weight on every token of each reread but the first (the writer's choice of step),
    as ``essential_weight`` does on the moves; every other token keeps the weight it had without it."""
    from stepentropy_rl.bootstrap import _encode, prompt_text_raw
    from stepentropy_rl.tasks.basket import generate
    from stepentropy_rl.tokenizer import train_tokenizer

    problems = generate(BasketConfig(style="verbose"), 100, 0)
    tok = train_tokenizer([prompt_text_raw(p) for p in problems], 300, whole_numbers=100)
    plain, weighted = _encode(tok, problems, 4.0), _encode(tok, problems, 4.0, reread_weight=3.0)
    rereads = [s.text for p in problems for s in p.steps if s.kind == "reread"]
    assert len(rereads) > 100
    seen = []
    for (_, response, before), (_, same, after) in zip(plain, weighted):
        assert same == response and set(before) == {1.0, 4.0}
        changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        if not changed:  # every reread of this one left out (the task's ``omit``)
            continue
        assert all(before[i] == 1.0 and after[i] == 3.0 for i in changed)
        runs = [[changed[0]]]  # the weighted tokens, in runs of consecutive positions: one per reread
        for i in changed[1:]:
            (runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i]))
        for run in runs:
            first = run[0] - 1  # the reread's first token keeps weight 1
            assert after[first] == 1.0
            seen.append(tok.decode(response[first: run[-1] + 1]).strip())
    assert seen == rereads
    with pytest.raises(ValueError, match="reread_weight"):
        TinyConfig(reread_weight=0.0)


def test_span_weights_weight_a_steps_tokens_but_its_first():
    """The one-walk weighting gives what the scan of every span gives, at the spans' edges too."""
    from stepentropy_rl.bootstrap import _span_weights

    spans = [(2, 6, 4.0), (8, 12, 3.0), (12, 14, 2.0)]
    offsets = [(s, s + 1) for s in range(16)]
    scan = [next((w for a, b, w in spans if a < s < b), 1.0) for s, _ in offsets]
    assert _span_weights(offsets, spans) == scan
    assert scan == [1, 1, 1, 4, 4, 4, 1, 1, 1, 3, 3, 3, 1, 2, 1, 1]
    assert _span_weights([(0, 3), (9, 11), (15, 16)], spans) == [1.0, 3.0, 1.0] and _span_weights([], spans) == []


class _Oracle:
    """A teacher-forced stand-in model: predicts every next token, except that a token among ``shifted`` (sorted ids)
    is predicted as the next one of them."""

    def __init__(self, tok, shifted=None):
        self.vocab, self.shifted = len(tok) + 1, shifted

    def __call__(self, input_ids, attention_mask):
        import torch

        following = torch.roll(input_ids, -1, dims=1)
        if self.shifted is not None:
            ids = self.shifted
            index = torch.searchsorted(ids, following).clamp(max=len(ids) - 1)
            following = torch.where(ids[index] == following, ids[(index + 1) % len(ids)], following)
        return type("Out", (), {"logits": torch.nn.functional.one_hot(following, self.vocab).float()})


def test_lookup_accuracy_scores_the_quantity_after_each_name():
    """Teacher-forced: a model that predicts every next token scores 1; one that predicts every token but writes each
    quantity as another number scores 0."""
    import torch

    from stepentropy_rl.bootstrap import lookup_accuracy, prompt_text_raw
    from stepentropy_rl.tasks.basket import generate
    from stepentropy_rl.tokenizer import train_tokenizer

    task = BasketConfig(style="verbose")
    tok = train_tokenizer([prompt_text_raw(p) for p in generate(task, 200, 0)], 300, whole_numbers=100)
    numbers = torch.tensor(sorted(tok.convert_tokens_to_ids(tok.tokenize(f" {q}")[0])
                                  for q in range(1, task.max_quantity + 1)))

    assert lookup_accuracy(_Oracle(tok), tok, task, n=20) == 1.0
    assert lookup_accuracy(_Oracle(tok, shifted=numbers), tok, task, n=20) == 0.0  # every quantity another one


def test_copy_accuracy_scores_each_kind_of_redundant_step():
    """Teacher-forced: a model that predicts every next token copies every redundant step; one that draws each name
    afresh (predicts another name wherever a name follows) fails every reread, the one kind that copies a name, and
    no other kind. The bootstrap warns about the kinds below 90%."""
    import torch

    from stepentropy_rl import bootstrap
    from stepentropy_rl.bootstrap import copy_accuracy, prompt_text_raw
    from stepentropy_rl.tasks.basket import NAMES, generate
    from stepentropy_rl.tokenizer import train_tokenizer

    task = BasketConfig(style="verbose")
    tok = train_tokenizer([prompt_text_raw(p) for p in generate(task, 1000, 0)], 512, whole_numbers=100)
    names = torch.tensor(sorted({tok.convert_tokens_to_ids(tok.tokenize(f" {n}")[0]) for n in NAMES}))
    assert len(names) == len(NAMES)  # each name one token, so that "another name" is one token too

    copies = copy_accuracy(_Oracle(tok), tok, task, n=20)
    assert set(copies) == {"problem", "reread", "verify", "restate", "reflect", "recap"}
    assert all(v == 1.0 for v in copies.values())
    fresh = copy_accuracy(_Oracle(tok, shifted=names), tok, task, n=20)
    assert fresh.pop("reread") == 0.0 and all(v == 1.0 for v in fresh.values())
    assert bootstrap.warn_uncopied({**fresh, "reread": 0.0}) == ["reread"]
    assert bootstrap.warn_uncopied(copies) == []


def test_a_base_that_names_the_last_person_left_seldom_is_warned_about(caplog):
    """The last move's person is forced; the stalled four-opener seed 1 base named it in 45% (docs)."""
    with caplog.at_level("WARNING", logger=bootstrap.log.name):
        assert bootstrap.warn_unnamed(0.45)
    assert "names the last person left in 45%" in caplog.text
    assert not bootstrap.warn_unnamed(0.86) and not bootstrap.warn_unnamed(None)


def test_chance_lookup_accuracy_is_binding_the_quantities_at_random():
    """Expected score of writing the most frequent unused quantity: 1/3 + 1/2 + 1 over three distinct quantities;
    with two equal ones the first move is right with p=2/3."""
    from stepentropy_rl.bootstrap import chance_lookup_accuracy
    from stepentropy_rl.tasks.basket import Problem, Step

    def problem(*quantities):
        steps = [Step(f"Now {n} {q}: 0 + {q} = {q}.", "essential", "move") for n, q in zip(("Ann", "Ben", "Cal"), quantities)]
        return Problem(id="p", prompt="", answer="0", steps=steps)

    assert chance_lookup_accuracy([problem(1, 2, 3)]) == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    assert chance_lookup_accuracy([problem(2, 2, 3)]) == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert chance_lookup_accuracy([problem(3, 2, 2)]) == pytest.approx((0 + 1 + 1) / 3)
    assert chance_lookup_accuracy([problem(4, 4, 4)]) == 1.0


def test_keeping_freed_memory_does_not_change_the_model(tmp_path, monkeypatch):
    """The bootstrap keeps freed memory in the heap (stepentropy_rl/heap.py) for speed; the weights it trains are
    the same to the bit as without."""
    import torch
    from safetensors.torch import load_file

    from stepentropy_rl import heap

    def weights(cache: str):
        monkeypatch.setenv("STEPENTROPY_CACHE", str(tmp_path / cache))
        return load_file(ensure_tiny_model(TinyConfig(**{**MICRO, "steps": 6}), progress=False) / "model.safetensors")

    kept = weights("kept")
    monkeypatch.setattr(heap, "_libc", lambda: None)
    plain = weights("plain")
    assert kept.keys() == plain.keys() and all(torch.equal(kept[k], plain[k]) for k in kept)
