"""data/prepare_*.py on small fixture files in each dataset's published format (written here): each writes the
project's JSONL and verl's Parquet, and both read back as the same problems."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from stepentropy_rl.data import load_problems

ROOT = Path(__file__).resolve().parents[2]


def prepare(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "data" / f"prepare_{name}.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def parquet(path: Path, rows):
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))


def both(out: Path, name: str, split: str):
    """The split read from the JSONL and from the verl Parquet, after checking that they agree."""
    a, b = load_problems(out / f"{name}_{split}.jsonl"), load_problems(out / f"{name}_{split}.parquet")
    fields = [(e.id, e.prompt, e.answer, e.solution, e.steps) for e in a]
    assert fields == [(e.id, e.prompt, e.answer, e.solution, e.steps) for e in b]
    assert {e.data_source for e in b} and all(e.extra_info["split"] == split for e in b)
    return a, b


GSM8K = [{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                      "How many clips did Natalia sell altogether in April and May?",
          "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                    "altogether in April and May.\n#### 72"},
         {"question": "A shop sold 1,000 pens and 234 more. How many?", "answer": "1000+234=<<1000+234=1234>>1234\n"
                                                                                   "#### 1,234"}]


@pytest.mark.parametrize("layout", ["openai jsonl", "hf parquet"])
def test_gsm8k_in_both_published_layouts(tmp_path, layout):
    src, out = tmp_path / "gsm8k", tmp_path / "out"
    for split in ("train", "test"):
        if layout == "openai jsonl":
            jsonl(src / f"{split}.jsonl", GSM8K)
        else:
            parquet(src / "main" / f"{split}-00000-of-00001.parquet", GSM8K)
    res = prepare("gsm8k", "--src", src, "--out", out)
    assert res.returncode == 0, res.stderr
    rows, _ = both(out, "gsm8k", "train")
    assert [r.answer for r in rows] == ["72", "1234"]
    assert rows[0].solution == ("Natalia sold 48/2 = 24 clips in May.\n\nNatalia sold 48+24 = 72 clips altogether in "
                                "April and May.\n</think>\n\nThe answer is \\boxed{72}.")
    assert (out / "gsm8k_test.parquet").exists()


def test_a_split_saved_in_several_shards_is_read_whole(tmp_path):
    """The scripts read the first shard of a split saved in several and dropped the rest's rows without a word."""
    src, out = tmp_path / "gsm8k", tmp_path / "out"
    for split in ("train", "test"):
        parquet(src / "main" / f"{split}-00000-of-00002.parquet", GSM8K[:1])
        parquet(src / "main" / f"{split}-00001-of-00002.parquet", GSM8K[1:])
    res = prepare("gsm8k", "--src", src, "--out", out)
    assert res.returncode == 0, res.stderr
    assert [r.answer for r in both(out, "gsm8k", "test")[0]] == ["72", "1234"]


def test_a_gsm8k_row_without_its_answer_line_is_named(tmp_path):
    jsonl(tmp_path / "src" / "train.jsonl", [GSM8K[0], {"question": "q", "answer": "no final line"}])
    res = prepare("gsm8k", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert res.returncode != 0 and "gsm8k train row 2" in res.stderr


def test_math500_keeps_latex_answers(tmp_path):
    rows = [{"problem": "Convert $(0,3)$ to polar coordinates.", "solution": "We have $r = 3$ ... $\\boxed{(3, "
             "\\frac{\\pi}{2})}$.", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus",
             "level": 2, "unique_id": "test/precalculus/807.json"},
            {"problem": "What is $1+1$?", "solution": "", "answer": "2", "subject": "Algebra", "level": 1,
             "unique_id": "test/algebra/1.json"}]
    jsonl(tmp_path / "MATH-500" / "test.jsonl", rows)
    res = prepare("math500", "--src", tmp_path / "MATH-500", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    got, _ = both(tmp_path / "out", "math500", "test")
    assert [g.answer for g in got] == [rows[0]["answer"], "2"] and got[0].id == "test/precalculus/807.json"
    assert got[1].solution is None and not (tmp_path / "out" / "math500_train.jsonl").exists()


def test_aime_in_its_published_spellings(tmp_path):
    parquet(tmp_path / "src" / "aime_2024.parquet",
            [{"ID": "2024-I-1", "Problem": "Every morning Aya ...", "Solution": "...", "Answer": 204}])
    jsonl(tmp_path / "src" / "aimo.jsonl", [{"id": 60, "problem": "Find ...", "solution": "...", "answer": "033",
                                             "url": "https://..."}])
    res = prepare("aime", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    got, _ = both(tmp_path / "out", "aime", "test")
    assert [(g.id, g.answer) for g in got] == [("2024-I-1", "204"), ("aime-aimo-60", "33")]  # files by name


def test_two_aime_files_numbered_from_0_keep_their_problems_apart(tmp_path):
    """AIMO's file and a 2025 copy both number their rows 0..N: their ids collided and the folder was refused, and
    id 0 alone was read as no id."""
    jsonl(tmp_path / "src" / "aimo.jsonl", [{"id": i, "problem": f"AIMO problem {i}", "answer": i} for i in range(3)])
    jsonl(tmp_path / "src" / "aime_2025.jsonl", [{"id": i, "problem": f"2025 problem {i}", "answer": i}
                                                 for i in range(3)])
    res = prepare("aime", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    got, _ = both(tmp_path / "out", "aime", "test")
    assert [g.id for g in got] == [f"aime-aime_2025-{i}" for i in range(3)] + [f"aime-aimo-{i}" for i in range(3)]


def test_aime_read_in_two_formats_counts_each_problem_once(tmp_path):
    """A folder holding one year as a download's .parquet and as a .jsonl (or this script's earlier output) gave each
    problem twice; a problem whose copies disagree on the answer is an error naming both."""
    rows = [{"id": "2024-I-1", "problem": "Every morning Aya ...", "answer": "204"},
            {"id": "2024-I-2", "problem": "There exist real numbers ...", "answer": "25"}]
    parquet(tmp_path / "src" / "aime_2024.parquet", rows)
    jsonl(tmp_path / "src" / "aime_2024.jsonl", [{**r, "problem": r["problem"] + "  "} for r in rows])
    res = prepare("aime", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    got, _ = both(tmp_path / "out", "aime", "test")
    assert [(g.id, g.answer) for g in got] == [("2024-I-1", "204"), ("2024-I-2", "25")]
    assert "2 problems read twice" in res.stdout
    jsonl(tmp_path / "src" / "aime_2024.jsonl", [{**rows[1], "id": "x", "answer": "52"}])
    res = prepare("aime", "--src", tmp_path / "src", "--out", tmp_path / "out2")
    assert res.returncode != 0 and "error: problem '2024-I-2' is 'x' with another answer" in res.stderr


@pytest.mark.parametrize("name,rows,message", [
    ("math500", [{"problem": "What is 1+1?", "answer": None}], "math500 row 1: needs 'problem' and 'answer'"),
    ("gsm8k", [{"question": "q", "answer": "worked\n#### "}], "gsm8k train row 1: needs 'question'"),
    ("gsm8k", [{"question": ["q"], "answer": "w\n#### 3"}], "gsm8k train row 1: needs 'question'"),
    ("aime", [["not", "an", "object"]], "a row must be an object, got list"),
    ("aime", [{"id": 1, "problem": "a", "answer": 1}, {"id": 1, "problem": "b", "answer": 2}],
     "rows 1 and 2 have one id 'aime-test-1'"),
])
def test_a_row_the_loader_would_refuse_is_refused_when_written(tmp_path, name, rows, message):
    """A null answer became the text "None" (graded wrong ever after), "#### " an empty answer the loader refuses,
    a list as question or a row that is no object a traceback, two rows with one id a file that cannot be read."""
    src = tmp_path / "src" / ("train.jsonl" if name == "gsm8k" else "test.jsonl")
    jsonl(src, rows)
    res = prepare(name, "--src", src, "--out", tmp_path / "out")
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_aime_files_without_ids_keep_their_problems_apart(tmp_path):
    """AIME 2025 ships as two question/answer files without ids: numbered per file, both gave aime-0 and aime-1."""
    for part in ("I", "II"):
        rows = [{"question": f"{part} {i}", "answer": str(i)} for i in (1, 2)]
        jsonl(tmp_path / "src" / f"aime2025-{part}.jsonl", rows)
    res = prepare("aime", "--src", tmp_path / "src", "--out", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    got, _ = both(tmp_path / "out", "aime", "test")
    assert [g.id for g in got] == ["aime-aime2025-I-0", "aime-aime2025-I-1", "aime-aime2025-II-0", "aime-aime2025-II-1"]


def test_an_aime_answer_that_is_not_an_integer_is_named(tmp_path):
    jsonl(tmp_path / "a.jsonl", [{"problem": "p", "answer": "12"}, {"problem": "p", "answer": "x/2"}])
    res = prepare("aime", "--src", tmp_path / "a.jsonl", "--out", tmp_path / "out")
    assert res.returncode != 0 and "a.jsonl row 2" in res.stderr


def test_basket_freezes_the_generated_splits_with_their_step_labels(tmp_path):
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.data import generated

    res = prepare("basket", "--data", "basket_verbose", "--n-train", 5, "--n-test", 3, "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    got, from_parquet = both(tmp_path, "basket_verbose", "test")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        task = build(compose("config", overrides=["data=basket_verbose", "run_dir=x"]), check_paths=False).data.task
    want = generated(task, 3, 0, "test")
    assert [(g.prompt, g.answer, g.steps) for g in got] == [(w.prompt, w.answer, w.steps) for w in want]
    assert {s["label"] for g in got for s in g.steps} == {"essential", "redundant"}
    assert json.loads(from_parquet[0].extra_info["steps"]) == want[0].steps


def test_shipped_champ_files_are_what_the_script_writes(tmp_path):
    """data/champ_*.jsonl are data/prepare_champ.py's output on the champ-dataset package, row for row."""
    pytest.importorskip("champ_dataset")
    res = prepare("champ", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    for name in ("champ_train.jsonl", "champ_test.jsonl"):
        assert (tmp_path / name).read_text() == (ROOT / "data" / name).read_text()
    both(tmp_path, "champ", "test")


@pytest.mark.parametrize("name", ["gsm8k", "math500", "aime"])
def test_each_dataset_config_reads_what_its_script_writes(tmp_path, monkeypatch, name):
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import ConfigError, build

    monkeypatch.chdir(tmp_path)  # the configs' paths are relative to where the user runs
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        tiny = compose("config", overrides=["+experiment=prune_sweep", f"data={name}", "run_dir=run"])
        cfg = compose("config", overrides=["+experiment=prune_sweep", f"data={name}", "run_dir=run",
                                           "model=r1_distill_qwen_7b", f"model.path={tmp_path / 'model'}"])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="the tiny reasoner, which knows only the embedded task"):
        build(tiny, check_paths=False)
    with pytest.raises(ConfigError, match=rf"data.path: no such file .*python data/prepare_{name}.py --src DOWNL"):
        build(cfg)
    jsonl(tmp_path / "data" / f"{name}_test.jsonl", [{"prompt": "1+1?", "answer": "2"}])
    job = build(cfg)
    assert job.data.grader == "math" and load_problems(job.data.path)[0].answer == "2"
