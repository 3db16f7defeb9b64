"""The tiny reasoner's tokenizer: byte-level BPE trained on the task, a ChatML template with a ``<think>`` prompt.

Loaded through ``AutoTokenizer`` as ``PreTrainedTokenizerFast`` (``tokenizer_class`` is pinned), so transformers and
vLLM read the same ``tokenizer.json`` and give the same ids. Byte-level pre-tokenization keeps numbers whole
(GPT-2's `` ?\\p{N}+`` split), which lets a small model learn arithmetic as a lookup over number tokens.
"""
from __future__ import annotations

import logging
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stepentropy_rl.cot_format import THINK_CLOSE, THINK_OPEN, split_thinking

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ChatML; the generation prompt opens the thinking as R1 distills do.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int, whole_numbers: int = 100) -> PreTrainedTokenizerFast:
    """Byte-level BPE over ``texts``; special tokens for the chat frame, think tags as normal added tokens.

    Numbers below ``whole_numbers`` are guaranteed single tokens (with and without a leading space): they are
    repeated in the BPE corpus so that their merges win over rare words.
    """
    numbers = " ".join(str(i) for i in range(whole_numbers))
    texts = list(texts) + [f" {numbers}\n" + numbers.replace(" ", "\n")] * 200
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=None, clean_up_tokenization_spaces=False)
    fast.add_tokens([THINK_OPEN, THINK_CLOSE])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save ``tok`` as a HF tokenizer directory."""
    tok.save_pretrained(str(path))


def prompt_text(tokenizer, prompt) -> str:
    """The chat-formatted prompt, ending with the generation prompt (``...assistant\\n<think>\\n``).

    ``prompt``: the user message (a string), or a problem (``data.Example``, or a row dict) with ``prompt`` and
    optional ``system`` and ``chat_kwargs`` (extra chat-template arguments, e.g. Qwen3's ``enable_thinking``).
    Where the template's generation prompt does not write ``<think>`` (Qwen3 in thinking mode, older R1 template
    revisions: the model writes it), ``<think>\\n`` is appended, so a response is always thinking, ``</think>``,
    answer: a tag the model wrote itself would sit in the first step, be scored and pruned with it, and leave SFT
    rows and answer prefixes without their opening tag. A generation prompt that writes the tag (closed or not) is
    kept as it is; one that writes only ``</think>`` (thinking off, DeepSeek-V3.1's default) is a ``ConfigError``."""
    if isinstance(prompt, str):
        question, system, kwargs = prompt, None, {}
    elif isinstance(prompt, dict):
        question, system, kwargs = prompt["prompt"], prompt.get("system"), prompt.get("chat_kwargs") or {}
    else:
        question, system, kwargs = prompt.prompt, getattr(prompt, "system", None), getattr(prompt, "chat_kwargs", {})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False, **kwargs)
    generation = text[len(without):] if text.startswith(without) else text[text.rfind(question) + len(question):]
    if THINK_OPEN in generation:
        return text
    if THINK_CLOSE in generation:  # "<think>" is no part of "</think>": the tag was appended after it
        from stepentropy_rl.typed import ConfigError

        raise ConfigError(f"the chat template's generation prompt closes the thinking ({generation.strip()!r}): its "
                          f"thinking is off, and the runs need a model that thinks; turn it on with the template's "
                          f"switch in data.chat_template_kwargs (e.g. +data.chat_template_kwargs.thinking=true)")
    return f"{text}{THINK_OPEN}\n"


# appended to a chat template whose generation prompt does not open the thinking (not where the caller turned
# thinking off: a served model can still be asked so, though training cannot)
OPEN_THINKING = ("{% if add_generation_prompt and not (enable_thinking is defined and enable_thinking is false) %}"
                 + THINK_OPEN + "\n{% endif %}")


def thinking_chat_template(tokenizer) -> str | None:
    """The tokenizer's chat template made to open the thinking as :func:`prompt_text` does, for serving a model
    trained on such prompts (``vllm serve`` renders the template as it is); None where the template already opens
    it. Raises ValueError where the tokenizer holds several named templates, or where the new one would not render
    a prompt as ``prompt_text`` does."""
    probe = [{"role": "user", "content": "What is 2 + 3?"}]
    asked = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    if prompt_text(tokenizer, probe[0]["content"]) == asked:
        return None
    if not isinstance(tokenizer.chat_template, str):
        raise ValueError("the tokenizer has several named chat templates; which one to open the thinking in is "
                         "not known")
    template = tokenizer.chat_template + OPEN_THINKING
    got = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True, chat_template=template)
    if got != prompt_text(tokenizer, probe[0]["content"]):
        raise ValueError(f"the chat template with {THINK_OPEN!r} appended renders a prompt otherwise than the run "
                         "asked it")
    return template


def response_thinking(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]], str, bool]:
    """``(text, offsets, thinking, closed)`` of a response given as ids (``token_offsets``, ``split_thinking``).
    In a response that never closed its thinking, a final special token (the EOS that ended it) is not thinking:
    no step holds it, its entropy scores nothing, and no answer prefix is built with it inside."""
    text, offsets = token_offsets(tokenizer, ids)
    thinking, closed = split_thinking(text)
    if not closed and offsets and int(ids[-1]) in set(getattr(tokenizer, "all_special_ids", ())):
        thinking = text[:offsets[-1][0]]
    return text, offsets, thinking, closed


def encode(tokenizer, text: str) -> list[int]:
    """``text`` as ids, adding no special tokens: a chat template renders its own BOS (R1's does), so the
    tokenizer's own BOS would come twice."""
    return tokenizer(text, add_special_tokens=False).input_ids


def control_text(tokenizer, text: str | None) -> str | None:
    """The first of the tokenizer's added tokens (``<think>``, ``</think>``, ``[SKIP]``, the EOS, ...) written as text
    in ``text``, or None. The tokenizer reads such text as the token itself: a question quoting "</think>" would close
    the thinking inside the prompt."""
    if not text:
        return None
    found = [(text.find(t), t) for t in tokenizer.get_added_vocab() if t and t in text]
    return min(found)[1] if found else None


def count_tokens(tokenizer, text: str) -> int:
    """Tokens ``text`` encodes to (no special tokens added)."""
    return len(encode(tokenizer, text))


def prompt_ids(tokenizer, prompt) -> list[int]:
    """The one tokenization of a prompt that every actor uses: the rollout engines get these ids (never text, which
    vLLM would tokenize again with the tokenizer's BOS added), the learners and the reference score them."""
    return encode(tokenizer, prompt_text(tokenizer, prompt))


def load_tokenizer(path: str | Path):
    """``AutoTokenizer.from_pretrained(path)``, checked against the checkpoint's own ``tokenizer.json``.

    transformers 5 loads a checkpoint whose config names ``LlamaTokenizerFast`` (DeepSeek-R1-Distill-Llama, or an
    R1-Distill-Qwen tokenizer without its ``config.json``) as ``LlamaTokenizer``, which replaces the file's
    byte-level pre-tokenizer with SentencePiece's: spaces and newlines vanish and ids silently differ from the
    ones the model was trained on. When the ids differ on a probe text, the file is loaded as it is instead.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    raw_file = Path(path) / "tokenizer.json"
    if raw_file.is_file():
        raw = Tokenizer.from_file(str(raw_file))
        if encode(tok, _PROBE) != raw.encode(_PROBE, add_special_tokens=False).ids:
            log.warning(
                "%s: %s does not reproduce tokenizer.json (a transformers 5 rebuild); loading the file as it is",
                path, type(tok).__name__)
            tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    return tok


# what ``save_pretrained`` of a tokenizer writes (fast, slow and SentencePiece ones; older and newer transformers)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files of checkpoint ``src`` into ``dst`` as they are: the same bytes every actor loaded,
    without loading a tokenizer (a 151k-vocabulary one takes seconds). Returns the names copied."""
    import shutil

    names = [n for n in TOKENIZER_FILES if (Path(src) / n).is_file()]
    if "tokenizer.json" not in names and "tokenizer.model" not in names and "vocab.json" not in names:
        raise FileNotFoundError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
    for n in names:
        shutil.copy2(Path(src) / n, Path(dst) / n)
    return names


_PROBE = "Hello world,\n\n  so 2 + 3 = 15.\tWait é 毕.\n\n"


def token_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` incrementally; return the text and each token's (start, end) character offsets in it.

    Works on exactly the ids given (sampled ids need not be the canonical tokenization of their text). A token that
    ends inside a multi-byte character gets zero width; the character lands on the token that completes it.
    """
    from tokenizers.decoders import DecodeStream

    backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else tokenizer._tokenizer
    stream = DecodeStream(skip_special_tokens=False)
    pieces, offsets, pos = [], [], 0
    for i in ids:
        piece = stream.step(backend, int(i)) or ""
        pieces.append(piece)
        offsets.append((pos, pos + len(piece)))
        pos += len(piece)
    return "".join(pieces), offsets
