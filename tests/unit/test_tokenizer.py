from transformers import AutoTokenizer

from stepentropy_rl.tasks.basket import BasketConfig, generate
from stepentropy_rl.tokenizer import EOS, prompt_text, token_offsets, train_tokenizer


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
                                   "final answer within \\boxed{}.<no-think>")
    assert prompt_text(tok, b).startswith("[system]Be brief.[user]What is $\\frac{1}{2}$ of 4?\nPlease")
    row = {"prompt": b.prompt, "system": b.system, "chat_kwargs": b.chat_kwargs}  # a pruned-data row
    assert prompt_text(tok, row) == prompt_text(tok, b)
    assert prompt_text(tok, "plain") == "[user]plain"
    assert as_asked([bare])[0].prompt == bare.prompt  # "{prompt}": asked as written
