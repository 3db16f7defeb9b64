"""The bad-input corpus: every case goes through the real entry (``main.launch``) and must end before any stage runs,
with one line naming the key or the row, and nothing written to the run directory. Two cases run the command itself
to check the exit code and that no traceback is printed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD = json.dumps({"prompt": "A basket has 1 coins. Put in: Ann 2. How many coins are in the basket at the end?",
                   "answer": "3"})


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose("config", overrides=overrides)


def launch_error(overrides) -> str:
    """The one-line message ``main.launch`` exits with for ``overrides``."""
    from stepentropy_rl.main import launch

    with pytest.raises(SystemExit) as e:
        launch(compose(overrides))
    msg = str(e.value.code)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def data_file(tmp_path, content: bytes, name="rows.jsonl") -> str:
    f = tmp_path / name
    f.write_bytes(content)
    return str(f)


NL = b"\n"
OVERLONG = json.dumps({"prompt": "Ann 2. " * 400, "answer": "1"}).encode()

# (file content, expected text in the message: the row is named as file:line)
DATA_CASES = {
    "empty file": (b"\n\n", "rows.jsonl: no rows"),
    "broken JSON": (GOOD.encode() + b"\n{not json\n", "rows.jsonl:2: not valid JSON"),
    "a list row": (b"[1, 2]\n", "rows.jsonl:1: a row must be a JSON object"),
    "missing prompt": (b'{"answer": "1"}\n', "rows.jsonl:1: 'prompt'"),
    "empty prompt": (b'{"prompt": "  ", "answer": "1"}\n', "rows.jsonl:1: 'prompt'"),
    "null answer": (b'{"prompt": "q", "answer": null}\n', "rows.jsonl:1: 'answer'"),
    "boolean answer": (b'{"prompt": "q", "answer": true}\n', "rows.jsonl:1: 'answer'"),
    "steps not a list": (b'{"prompt": "q", "answer": "1", "steps": "no"}\n', "rows.jsonl:1: 'steps'"),
    "non-UTF-8 bytes": (GOOD.encode() + b"\n" + GOOD.encode()[:20] + b"\xff\xfe" + GOOD.encode()[20:] + b"\n",
                        "rows.jsonl:2: not UTF-8 text"),
    "Latin-1 file": ('{"prompt": "Caf\u00e9?", "answer": "1"}\n'.encode("latin-1"), "rows.jsonl:1: not UTF-8 text"),
    "prompt longer than the context": (GOOD.encode() + b"\n" + OVERLONG + b"\n",
                                       "rows.jsonl:2: the prompt is"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_is_named_before_anything_runs(micro_model, tmp_path, case):
    content, expected = DATA_CASES[case]
    run_dir = tmp_path / "run"
    msg = launch_error(["+experiment=prune_sweep", f"run_dir={run_dir}", f"model.path={micro_model}",
                        f"data.path={data_file(tmp_path, content)}"])
    assert msg.startswith("data error: ") and expected in msg, msg
    assert not run_dir.exists()


def test_a_bad_row_of_a_verl_parquet_file_is_named(micro_model, tmp_path):
    from datasets import Dataset

    rows = [{"data_source": "x", "prompt": [{"role": "user", "content": "1+1?"}],
             "reward_model": {"style": "rule", "ground_truth": gt}} for gt in ("2", "")]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "test.parquet"))
    msg = launch_error(["+experiment=prune_sweep", f"run_dir={tmp_path / 'run'}", f"model.path={micro_model}",
                        f"data.path={tmp_path / 'test.parquet'}"])
    assert msg.startswith("data error: ") and "test.parquet:row 2: 'reward_model.ground_truth'" in msg, msg
    assert not (tmp_path / "run").exists()


def test_bad_training_rows_are_named(micro_model, tmp_path):
    run_dir, train = tmp_path / "run", data_file(tmp_path, b'{"prompt": 3, "answer": 1}\n', "train.jsonl")
    msg = launch_error(["+experiment=entropy_guided", f"run_dir={run_dir}", f"model.path={micro_model}",
                        f"data.train_path={train}"])
    assert "train.jsonl:1: 'prompt'" in msg and not run_dir.exists()


def test_keep_essential_on_unlabelled_training_rows_is_named(micro_model, tmp_path):
    run_dir = tmp_path / "run"
    msg = launch_error(["+experiment=entropy_guided", f"run_dir={run_dir}", f"model.path={micro_model}",
                        f"data.train_path={data_file(tmp_path, GOOD.encode() + NL, 'train.jsonl')}",
                        "trainer.prune.keep_essential=true"])
    assert msg.startswith("config error: trainer.prune.keep_essential needs step labels") and not run_dir.exists()


def test_every_row_overlong_under_skip_is_an_error(micro_model, tmp_path):
    """Skipping never leaves no data: when even the shortest prompt does not fit, the budget's key is named."""
    msg = launch_error(["+experiment=prune_sweep", f"run_dir={tmp_path / 'run'}", f"model.path={micro_model}",
                        "data.overlong=skip", f"data.path={data_file(tmp_path, OVERLONG + NL)}"])
    assert msg.startswith("config error: rollout.max_tokens + rollout.answer_max_tokens") and "a prompt of" in msg


def test_overlong_rows_are_skipped_and_counted(micro_model, tmp_path):
    from stepentropy_rl.config import build
    from stepentropy_rl.driver.run import pipeline_for, prepare

    cfg = build(compose(["+experiment=prune_sweep", f"run_dir={tmp_path / 'run'}", f"model.path={micro_model}",
                         "data.overlong=skip",
                         f"data.path={data_file(tmp_path, GOOD.encode() + NL + OVERLONG + NL)}"]))
    job = prepare(cfg, pipeline_for(cfg))
    assert len(job.eval_problems) == 1
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["eval"] == {"rows": 2, "used": 1, "skipped_overlong": 1}


def test_a_rerun_on_rewritten_data_is_refused_before_it_rewrites_the_runs_records(micro_model, tmp_path):
    """A data file rewritten in place was refused only once the actors had started, after config.yaml and
    data_report.json had been rewritten for the refused data: the finished run's record described problems it never
    used."""
    from stepentropy_rl.config import ConfigError, build
    from stepentropy_rl.driver.run import pipeline_for, prepare
    from stepentropy_rl.driver.train import Stages, problems_digest

    run_dir, held = tmp_path / "run", data_file(tmp_path, GOOD.encode() + NL)
    args = ["+experiment=entropy_guided", f"run_dir={run_dir}", f"model.path={micro_model}", f"data.path={held}",
            f"data.train_path={data_file(tmp_path, GOOD.encode() + NL, 'train.jsonl')}",
            "trainer.prune.keep_essential=false"]
    cfg = build(compose(args))
    job = prepare(cfg, pipeline_for(cfg))
    job.lock.release()
    Stages(run_dir).mark("init", {"base": micro_model})
    Stages(run_dir).mark("eval_base", {"eval_problems": problems_digest(job.eval_problems)})
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "data_report.json")}
    data_file(tmp_path, GOOD.encode() + NL + GOOD.replace("Ann 2", "Ann 5").replace('"3"', '"6"').encode() + NL)
    with pytest.raises(ConfigError, match="the held-out problems differ from those its stage 'eval_base' used"):
        prepare(cfg, pipeline_for(cfg))
    assert {name: (run_dir / name).read_bytes() for name in before} == before


def test_a_byte_order_mark_is_accepted(tmp_path):
    from stepentropy_rl.data import load_jsonl

    rows = load_jsonl(data_file(tmp_path, b"\xef\xbb\xbf" + GOOD.encode() + b"\n"))
    assert rows[0].answer == "3" and rows[0].where.endswith("rows.jsonl:1")


# (override, the key the message must name)
CONFIG_CASES = {
    "negative GRPO lr": ("trainer.grpo.lr=-1", "trainer.grpo.lr"),
    "NaN GRPO lr": ("trainer.grpo.lr=nan", "trainer.grpo.lr"),
    "infinite SFT lr": ("trainer.sft.lr=inf", "trainer.sft.lr"),
    "zero optimizer lr": ("trainer.optim.lr=0", "trainer.optim.lr"),
    "infinite KL coefficient": ("algorithm.kl_coef=inf", "algorithm.kl_coef"),
    "NaN KL coefficient": ("algorithm.kl_coef=nan", "algorithm.kl_coef"),
    "negative KL coefficient": ("algorithm.kl_coef=-0.1", "algorithm.kl_coef"),
    "negative clip ratio": ("algorithm.clip_ratio_low=-0.2", "algorithm.clip_ratio_low"),
    "NaN clip ratio": ("algorithm.clip_ratio_high=nan", "algorithm.clip_ratio_high"),
    "dual clip below 1": ("algorithm.clip_ratio_c=0.5", "algorithm.clip_ratio_c"),
    "unknown loss mode": ("algorithm.loss_agg_mode=token-average", "algorithm.loss_agg_mode"),
    "unknown KL type": ("algorithm.kl_type=kl9", "algorithm.kl_type"),
    "mini-batch that does not divide": ("algorithm.ppo_mini_batch_size=5", "algorithm.ppo_mini_batch_size"),
    "group of one": ("algorithm.n_samples=1", "algorithm.n_samples"),
    "unknown key": ("+trainer.grpo.stepz=3", "trainer.grpo.stepz"),
    "wrong type": ("trainer.grpo.steps=two", "trainer.grpo.steps"),
    "budget past the context": ("trainer.grpo.max_tokens=100000", "trainer.grpo.max_tokens"),
    "unknown overlong policy": ("data.overlong=truncate", "data.overlong"),
    "missing data file": ("data.path=/nonexistent/rows.jsonl", "data.path"),
    "prompt template without its slot": ("data.prompt_template=Solve.", "data.prompt_template"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_is_named_before_anything_runs(micro_model, tmp_path, case):
    override, key = CONFIG_CASES[case]
    run_dir = tmp_path / "run"
    msg = launch_error(["+experiment=entropy_guided", f"run_dir={run_dir}", f"model.path={micro_model}", override])
    assert msg.startswith("config error: ") and key in msg, msg
    assert not run_dir.exists()


@pytest.mark.parametrize("override,expected", [
    ("trainer.grpo.lr=-1", "config error: trainer.grpo.lr"),
    ("data.path={bad}", "data error: "),
])
def test_the_command_exits_non_zero_with_one_line(micro_model, tmp_path, override, expected):
    bad = data_file(tmp_path, b"\xff\n")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "+experiment=entropy_guided",
                           f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}", "hydra.output_subdir=null",
                           f"model.path={micro_model}", override.format(bad=bad)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STEPENTROPY_TRACEBACK": ""})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and expected in proc.stderr, proc.stderr[-2000:]
    assert len([line for line in proc.stderr.splitlines() if "error:" in line]) == 1
    assert not run_dir.exists()
