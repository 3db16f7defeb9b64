"""What an export serves: the chat template opening the thinking as the run's prompts did, the evaluation's
sampling as the default, and the card saying both."""
import json

import pytest

from stepentropy_rl.export import ExportError, asked_and_sampled, serve_as_trained, source
from stepentropy_rl.tokenizer import load_tokenizer, prompt_text, thinking_chat_template
from tests.unit.test_tokenizer import QWEN3_LIKE, _tok

CONFIG = {"data": {"prompt_template": "{prompt}\nPlease reason step by step.", "system_prompt": None,
                   "chat_template_kwargs": {}},
          "trainer": {"eval": {"temperature": 0.6, "max_tokens": 384}}, "rollout": {"top_p": 0.95}}


def test_a_template_that_opens_the_thinking_is_kept_and_one_that_does_not_gets_the_tag(tmp_path):
    _, tok = _tok(tmp_path)
    assert thinking_chat_template(tok) is None  # the tiny reasoner's ChatML opens it
    ours = prompt_text(tok, "What is 1+1?")
    tok.chat_template = QWEN3_LIKE
    opened = thinking_chat_template(tok)
    msgs = [{"role": "user", "content": "What is 1+1?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) != ours  # served as it was
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, chat_template=opened) == ours
    off = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, chat_template=opened,
                                  enable_thinking=False)
    assert off.endswith("assistant\n<think>\n\n</think>\n\n")  # a client that turns thinking off gets no second tag
    assert not tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False,
                                       chat_template=opened).endswith("<think>\n")
    tok.chat_template = {"default": QWEN3_LIKE, "tool_use": QWEN3_LIKE}
    with pytest.raises(ValueError, match="several named chat templates"):
        thinking_chat_template(tok)


@pytest.mark.parametrize("template", ["ours", "qwen3"])
def test_the_exported_directory_serves_the_runs_prompts_and_sampling(tmp_path, template):
    _, tok = _tok(tmp_path / "base")
    ours = prompt_text(tok, "What is 1+1?")
    if template == "qwen3":
        tok.chat_template = QWEN3_LIKE
    out = tmp_path / "out"
    tok.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    serve_as_trained(out, CONFIG)
    served = load_tokenizer(out)
    msgs = [{"role": "user", "content": "What is 1+1?"}]
    assert served.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == ours
    changed = {p.name for p in out.iterdir() if before.get(p.name) != p.read_bytes()}
    assert changed == ({"generation_config.json"} | ({"chat_template.jinja"} if template == "qwen3" else set()))
    gen = json.loads((out / "generation_config.json").read_text())
    # as the engines sampled: no top-k, min-p or repetition penalty (transformers would take top_k 50, a Qwen3 base
    # its own 20)
    assert gen == {"eos_token_id": 2, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 384, "do_sample": True,
                   "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def test_the_card_says_how_the_run_asked_and_sampled():
    text = "\n".join(asked_and_sampled(CONFIG))
    assert "`{prompt}\nPlease reason step by step.`" in text and "system prompt: none" in text
    assert "temperature=0.6, top_p=0.95, max_new_tokens=384" in text
    assert asked_and_sampled({}) == []


def test_the_card_names_the_runs_base_and_grpo_and_a_stray_step_folder_is_no_step(tmp_path):
    """The card said 'from the embedded tiny reasoner' for an R1 stand-in run and 'entropy-guided GRPO' for a
    step_entropy run; a user's grpo/step_39.bak made --step raise a bare ValueError."""
    import yaml

    from stepentropy_rl.export import ExportError, model_card, source

    run = tmp_path / "run"
    (run / "grpo" / "step_39.bak").mkdir(parents=True)
    (run / "grpo" / "step_40" / "learner").mkdir(parents=True)
    (run / "grpo" / "step_40" / "driver.json").write_text("{}")
    with pytest.raises(ExportError, match=r"no GRPO checkpoint for step 12 \(kept: \[40\]"):
        source(run, 12)
    config = {"model": {"path": None, "standin": {"seed": 0}}, "algorithm": {"phase": {"mode": "compress"}},
              "reward": {"stages": {"compress": [{"name": "correctness"}, {"name": "skip_ratio"}],
                                    "explore": [{"name": "correctness"}, {"name": "skip_ratio"}]}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    card = model_card(run, "the final model", "se-final", tmp_path / "out")
    assert "then GRPO with the reward terms correctness, skip_ratio, phase mode `compress`), from the R1-format " \
           "stand-in" in card
    # a checkpoint's card showed the run's table as if it measured the checkpoint
    (run / "report.json").write_text(json.dumps({"models": {"final": {"accuracy": 0.99, "thinking_tokens": 51.0,
                                                                      "n": 500}}}))
    assert "was not evaluated" not in card
    card = model_card(run, "GRPO step 40", "se-step40", tmp_path / "out")
    assert "This checkpoint (GRPO step 40) was not evaluated; the run evaluated these models:" in card
    assert "| final | 99.0% | 51.0 |" in card


def test_a_folder_that_is_no_training_run_is_said_to_be_none(tmp_path):
    """A mistyped run directory, or a study's, was told to resume the run or export --model sft."""
    for step in (None, 40):
        with pytest.raises(ExportError, match=r"nope: no such directory"):
            source(tmp_path / "nope", step)
    (tmp_path / "study").mkdir()
    with pytest.raises(ExportError, match=r"not a training run's directory \(no stages/: a study's, or another"):
        source(tmp_path / "study", None)


def test_only_a_model_its_stage_marked_done_is_exported(tmp_path):
    """models/final was exported whenever its config.json existed: half written by a kill in its save (the config
    comes before the weights), or the old config's model while a redo of SFT and GRPO runs."""
    for name in ("final", "sft"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "config.json").write_text("{}")
    (tmp_path / "stages").mkdir()
    with pytest.raises(ExportError, match=r"models/final has no stages/grpo.done .*--model sft \(the SFT model, not "
                                          r"done either\)"):
        source(tmp_path, None)
    with pytest.raises(ExportError, match=r"models/sft has no stages/sft.done"):
        source(tmp_path, None, "sft")
    (tmp_path / "stages" / "sft.done").write_text("{}")
    # GRPO not done: "export the final model" exported the SFT model under the name it was given
    with pytest.raises(ExportError, match=r"models/final has no stages/grpo.done .*--model sft \(the SFT model\) or a "
                                          r"GRPO checkpoint with --step N"):
        source(tmp_path, None)
    assert source(tmp_path, None, "sft") == ("the sft model", tmp_path / "models" / "sft")
    (tmp_path / "stages" / "grpo.done").write_text("{}")
    assert source(tmp_path, None) == ("the final model", tmp_path / "models" / "final")
    (tmp_path / "grpo" / "step_4" / "learner").mkdir(parents=True)  # a checkpoint killed before its driver.json
    with pytest.raises(ExportError, match=r"no GRPO checkpoint for step 4 \(kept: none"):
        source(tmp_path, 4)
    (tmp_path / "grpo" / "step_4" / "driver.json").write_text("{}")
    assert source(tmp_path, 4) == ("GRPO step 4", tmp_path / "grpo" / "step_4" / "learner")
