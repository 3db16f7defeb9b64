from transformers import AutoTokenizer

from stepentropy_rl.tasks.basket import BasketConfig, generate
from stepentropy_rl.cot_record import cot_record, step_texts
from stepentropy_rl.entropy import scored_steps
from stepentropy_rl.tokenizer import EOS, encode, prompt_text, response_thinking, token_offsets, train_tokenizer

# Qwen3's shape: the generation prompt opens no thinking unless thinking is off (then an empty block)
QWEN3_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not "
              "enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def _tok(tmp_path):
    probs = generate(BasketConfig(), 300, 0)
    tok = train_tokenizer([p.prompt + "\n" + p.solution for p in probs], 600, whole_numbers=60)
    tok.save_pretrained(tmp_path)
    return probs, AutoTokenizer.from_pretrained(tmp_path)


def test_saved_tokenizer_round_trips_with_same_ids(tmp_path):
    probs, tok = _tok(tmp_path)
    p = probs[0]
    text = prompt_text(tok, p.prompt) + p.solution + EOS
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert prompt_text(tok, p.prompt).endswith("<|im_start|>assistant\n<think>\n")
    # think tags and the chat markers are single tokens; numbers stay whole
    for piece in ["<think>", "</think>", "<|im_end|>"] + [f" {i}" for i in range(60)] + [str(i) for i in range(60)]:
        assert len(tok(piece, add_special_tokens=False).input_ids) == 1, piece
    # think tags are normal tokens: visible after skip_special_tokens decoding
    assert "</think>" in tok.decode(ids, skip_special_tokens=True)


def test_token_offsets_cover_text_exactly(tmp_path):
    probs, tok = _tok(tmp_path)
    ids = tok(probs[1].solution, add_special_tokens=False).input_ids
    text, offs = token_offsets(tok, ids)
    assert text == probs[1].solution
    assert offs[0][0] == 0 and offs[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(offs, offs[1:]))


def test_a_problem_is_asked_with_its_template_system_message_and_chat_arguments(tmp_path):
    from stepentropy_rl.config import R1_INSTRUCTION
    from stepentropy_rl.data import Example, as_asked

    _, tok = _tok(tmp_path)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}")
    own = Example(id="a", prompt="What is 1+1?", answer="2", system="Row's own.")
    bare = Example(id="b", prompt="What is $\\frac{1}{2}$ of 4?", answer="2")
    a, b = as_asked([own, bare], R1_INSTRUCTION, "Be brief.", {"enable_thinking": False})
    assert prompt_text(tok, a) == ("[system]Row's own.[user]What is 1+1?\nPlease reason step by step, and put your "
                                   "final answer within \\boxed{}.<no-think><think>\n")
    assert prompt_text(tok, b).startswith("[system]Be brief.[user]What is $\\frac{1}{2}$ of 4?\nPlease")
    row = {"prompt": b.prompt, "system": b.system, "chat_kwargs": b.chat_kwargs}  # a pruned-data row
    assert prompt_text(tok, row) == prompt_text(tok, b)
    assert prompt_text(tok, "plain") == "[user]plain<think>\n"
    assert as_asked([bare])[0].prompt == bare.prompt  # "{prompt}": asked as written


def test_the_prompt_always_opens_the_thinking_and_never_twice(tmp_path):
    """A template whose generation prompt leaves ``<think>`` to the model gets it appended, or the model's own tag
    would sit in the first step, be scored and pruned with it; a template that writes it is kept as it is."""
    _, tok = _tok(tmp_path)
    ours = prompt_text(tok, "What is 1+1?")
    assert ours.endswith("<|im_start|>assistant\n<think>\n") and ours.count("<think>") == 1
    tok.chat_template = QWEN3_LIKE
    assert prompt_text(tok, "What is 1+1?") == ours  # thinking mode: the same prompt as a template that opens it
    off = {"prompt": "What is 1+1?", "chat_kwargs": {"enable_thinking": False}}
    assert prompt_text(tok, off).endswith("assistant\n<think>\n\n</think>\n\n")  # its own empty block, kept
    assert prompt_text(tok, "I write <think> in my question") == ours.replace("What is 1+1?",
                                                                                "I write <think> in my question")


def test_an_unclosed_thinking_that_ended_on_eos_has_no_eos_in_its_steps(tmp_path):
    _, tok = _tok(tmp_path)
    ids = encode(tok, "Now Dee 2: 2 + 2 = 4.\n\nSo the basket has 4 now.") + [tok.eos_token_id]
    entropy = [0.5] * (len(ids) - 1) + [100.0]  # the EOS's own entropy must score no step
    text, _, thinking, closed = response_thinking(tok, ids)
    assert text.endswith(EOS) and thinking == "Now Dee 2: 2 + 2 = 4.\n\nSo the basket has 4 now." and not closed
    texts, ents = scored_steps(tok, ids, entropy, "\n\n", "sum")
    assert texts == ["Now Dee 2: 2 + 2 = 4.", "So the basket has 4 now."] and max(ents) < 100
    rec = cot_record(tok, ids, entropy)
    assert step_texts(rec) == texts and EOS not in rec["thinking"] and len(rec["tokens"]) == len(ids) - 1
    closed_ids = encode(tok, "So 4.\n</think>\n\nThe answer is \\boxed{4}.") + [tok.eos_token_id]
    _, _, thinking, closed = response_thinking(tok, closed_ids)
    assert closed and thinking == "So 4.\n"


def test_a_question_that_writes_a_control_token_as_text_is_refused_by_its_row(tmp_path):
    """A question quoting "</think>" was encoded with the real </think> id inside the prompt (R1's EOS likewise):
    engine, learners and reference all read a prompt whose thinking closed before the model's turn."""
    import pytest
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.data import DataError, Example
    from stepentropy_rl.driver.run import fit_context
    from stepentropy_rl.tokenizer import control_text
    from tests.unit.test_config import CONF

    _, tok = _tok(tmp_path)
    tok.add_tokens(["<think>", "</think>"])
    assert control_text(tok, "Why does a model write </think> or <think>?") == "</think>"  # the first one written
    assert control_text(tok, "A basket has 3 coins.") is None and control_text(tok, None) is None
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = build(compose("config", overrides=["+experiment=prune_sweep", "run_dir=/tmp/x"]))
    quoting = Example(id="q7", prompt="Explain the tag </think>.", answer="1", where="data.jsonl:7")
    with pytest.raises(DataError, match=r"data.jsonl:7: its question holds '</think>', which the tokenizer reads as its "
                                        r"control token"):
        fit_context(cfg, str(tmp_path), tok, [Example(id="ok", prompt="1+1?", answer="2"), quoting], "eval")
    told = Example(id="s", prompt="1+1?", answer="2", system="End with <|endoftext|>.")
    with pytest.raises(DataError, match=r"s: its system prompt holds '<\|endoftext\|>'"):
        fit_context(cfg, str(tmp_path), tok, [told], "eval")


def test_held_out_prompts_need_room_for_the_evaluation_only(tmp_path):
    """Held-out prompts were checked against the prune stage's budget too (CoT + answer), which a training job never
    spends on them: under data.overlong=skip long held-out problems were dropped, under error refused."""
    import pytest
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.data import DataError, Example
    from stepentropy_rl.driver.run import fit_context
    from tests.unit.test_config import CONF

    _, tok = _tok(tmp_path)
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = build(compose("config", overrides=[
            "+experiment=entropy_guided", "run_dir=/tmp/x", "rollout.engine.max_model_len=512",
            "rollout.max_tokens=384",
            "trainer.prune.answer_max_tokens=32", "trainer.grpo.max_tokens=320", "trainer.eval.max_tokens=200"]))
    n = len(tok("a " * 200, add_special_tokens=False).input_ids)
    long_ = Example(id="long", prompt="a " * 200, answer="1", where="data.jsonl:2")  # fits 200 more, not 416 more
    short = Example(id="short", prompt="1+1?", answer="2")
    assert 512 - 416 < n + 10 <= 512 - 200
    assert fit_context(cfg, str(tmp_path), tok, [short, long_], "eval") == [short, long_]
    with pytest.raises(DataError, match=r"data.jsonl:2: the prompt is \d+ tokens; with rollout.max_tokens \+ "
                                        r"trainer.prune.answer_max_tokens = 416"):
        fit_context(cfg, str(tmp_path), tok, [short, long_], "train")


def test_a_gold_solution_longer_than_the_context_allows_is_named_before_anything_runs(tmp_path):
    """trainer.prune.source=gold prunes each row's solution, which no rollout.max_tokens caps: a long one passed the
    start-up check and ran past the engine's context in the prune stage's answer check or its scoring."""
    import pytest
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.data import DataError, Example
    from stepentropy_rl.driver.run import fit_context
    from tests.unit.test_config import CONF

    _, tok = _tok(tmp_path)
    budgets = ["run_dir=/tmp/x", "rollout.engine.max_model_len=512", "rollout.max_tokens=128",
               "trainer.prune.answer_max_tokens=32", "trainer.grpo.max_tokens=128", "trainer.eval.max_tokens=128"]
    gold = "Add 1 and 1. " * 60 + "\n</think>\n\nThe answer is \\boxed{2}."
    rows = [Example(id="short", prompt="1+1?", answer="2", solution="1 + 1 = 2.\n</think>\n\n\\boxed{2}."),
            Example(id="long", prompt="1+1?", answer="2", solution=gold, where="train.jsonl:2")]
    assert len(tok(gold, add_special_tokens=False).input_ids) + 32 + len(tok("1+1?").input_ids) > 512
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sampled = build(compose("config", overrides=["+experiment=entropy_guided", *budgets]))
        from_gold = build(compose("config", overrides=["+experiment=entropy_guided", "trainer.prune.source=gold",
                                                       *budgets]))
        skip = build(compose("config", overrides=["+experiment=entropy_guided", "trainer.prune.source=gold",
                                                  "data.overlong=skip", *budgets]))
    assert fit_context(sampled, str(tmp_path), tok, rows, "train") == rows  # their solutions are never read
    with pytest.raises(DataError, match=r"train.jsonl:2: the prompt is \d+ tokens; with a gold solution's tokens \+ "
                                        r"trainer.prune.answer_max_tokens = \d+ it exceeds the engine's context"):
        fit_context(from_gold, str(tmp_path), tok, rows, "train")
    assert fit_context(skip, str(tmp_path), tok, rows, "train") == rows[:1]
    assert fit_context(from_gold, str(tmp_path), tok, rows, "eval") == rows  # held-out rows are sampled, not pruned


def test_a_template_whose_generation_prompt_closes_the_thinking_is_refused(tmp_path):
    """A template with thinking off by default (DeepSeek-V3.1's '</think>' generation prompt) was given '<think>\\n'
    after it: every prompt read '</think><think>', a thinking closed before it opened."""
    import pytest

    from stepentropy_rl.typed import ConfigError

    _, tok = _tok(tmp_path)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% if thinking is defined and thinking %}<think>"
                         "{% else %}</think>{% endif %}{% endif %}")
    with pytest.raises(ConfigError, match=r"generation prompt closes the thinking \('\[assistant\]</think>'\)"):
        prompt_text(tok, "What is 1+1?")
    on = {"prompt": "What is 1+1?", "chat_kwargs": {"thinking": True}}
    assert prompt_text(tok, on).endswith("[assistant]<think>")
