import json

import pytest

from stepentropy_rl.data import DataError, load_jsonl, write_jsonl


def test_good_file(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": 2}) + "\n\n" +
                 json.dumps({"prompt": "x", "answer": "y", "steps": [{"text": "s", "label": "essential"}]}) + "\n")
    rows = load_jsonl(f)
    assert [r.answer for r in rows] == ["2", "y"] and rows[1].steps[0]["label"] == "essential"


@pytest.mark.parametrize("line,msg", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"answer": "1"}', "'prompt'"),
    ('{"prompt": "q", "answer": ""}', "'answer'"),
    ('{"prompt": "q", "answer": true}', "'answer'"),
    ('{"prompt": "q", "answer": NaN}', "'answer' is nan"),
    ('{"prompt": "q", "answer": Infinity}', "'answer' is inf"),
    ('{"prompt": "q", "answer": ' + "9" * 5000 + "}", "not readable JSON"),
    ('{"prompt": "q", "answer": "1", "steps": "no"}', "'steps'"),
    ('{"prompt": "q", "answer": "1", "solution": 42}', "'solution' must be a string, got int"),
])
def test_malformed_rows_name_the_line(tmp_path, line, msg):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "answer": "1"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: .*{msg}"):
        load_jsonl(f)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_jsonl(tmp_path / "e.jsonl")


def test_write_is_atomic(tmp_path):
    f = tmp_path / "out.jsonl"
    write_jsonl(f, [{"a": 1}])
    assert f.read_text() == '{"a": 1}\n' and not list(tmp_path.glob("*.tmp"))


def test_shipped_champ_files_hold_boxed_reference_solutions():
    """(That they are data/prepare_champ.py's output: tests/unit/test_prepare_data.py.)"""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    rows = [json.loads(line) for line in (root / "data" / "champ_test.jsonl").read_text().splitlines()]
    assert all("\n</think>\n\nThe answer is \\boxed{" + r["answer"] + "}." in r["solution"] for r in rows)
    assert len(load_jsonl(root / "data" / "champ_train.jsonl")) == 72 and len(rows) == 13


def verl_rows():
    return [{"data_source": "openai/gsm8k", "ability": "math",
             "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}],
             "reward_model": {"style": "rule", "ground_truth": "2"}, "extra_info": {"split": "test", "index": 0}},
            {"data_source": "openai/gsm8k", "ability": "math", "prompt": [{"role": "user", "content": "2+2?"}],
             "reward_model": {"style": "rule", "ground_truth": "4"}, "extra_info": {"split": "test", "index": 1}}]


def test_verl_parquet_rows_read_as_problems(tmp_path):
    from datasets import Dataset

    from stepentropy_rl.data import load_problems

    Dataset.from_list(verl_rows()).to_parquet(str(tmp_path / "test.parquet"))
    a, b = load_problems(tmp_path / "test.parquet")
    assert (a.prompt, a.answer, a.system, a.data_source, a.id) == ("1+1?", "2", "Be brief.", "openai/gsm8k",
                                                                   "openai/gsm8k-0")
    assert (b.answer, b.system, b.extra_info["index"]) == ("4", None, 1)
    assert a.where.endswith("test.parquet:row 1")


def test_a_json_array_keys_and_dataset_directories(tmp_path):
    from datasets import Dataset, DatasetDict

    from stepentropy_rl.data import load_problems

    rows = [{"question": "1+1?", "meta": {"final": 2}}, {"question": "2+2?", "meta": {"final": "4"}}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    got = load_problems(tmp_path / "rows.json", prompt_key="question", answer_key="meta.final")
    assert [(g.prompt, g.answer) for g in got] == [("1+1?", "2"), ("2+2?", "4")]
    # save_to_disk: the split the caller asks for
    DatasetDict(train=Dataset.from_list(verl_rows()[:1]), test=Dataset.from_list(verl_rows()[1:])).save_to_disk(
        str(tmp_path / "saved"))
    assert load_problems(tmp_path / "saved", split="train")[0].prompt == "1+1?"
    assert load_problems(tmp_path / "saved", split="test")[0].prompt == "2+2?"
    # a hub snapshot: data files the datasets library finds by their names
    snap = tmp_path / "snapshot" / "data"
    snap.mkdir(parents=True)
    Dataset.from_list(verl_rows()).to_parquet(str(snap / "test-00000-of-00001.parquet"))
    assert [p.answer for p in load_problems(tmp_path / "snapshot")] == ["2", "4"]
    with pytest.raises(DataError, match="no 'validation' split|no 'train' split"):
        load_problems(tmp_path / "snapshot", split="train")
    # splits as folders are one dataset; two configs side by side (GSM8K's main/ and socratic/) are two
    for split in ("train", "test"):
        (tmp_path / "by_split" / split).mkdir(parents=True)
        Dataset.from_list(verl_rows()).to_parquet(str(tmp_path / "by_split" / split / "0.parquet"))
    assert [p.answer for p in load_problems(tmp_path / "by_split")] == ["2", "4"]
    for config in ("main", "socratic"):
        (tmp_path / "gsm8k" / config).mkdir(parents=True)
        Dataset.from_list(verl_rows()).to_parquet(str(tmp_path / "gsm8k" / config / "test-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"holds several datasets \(main, socratic\).*point at one of them"):
        load_problems(tmp_path / "gsm8k")
    assert len(load_problems(tmp_path / "gsm8k" / "main")) == 2


def test_two_rows_with_one_id_are_an_error_naming_both(tmp_path):
    """Results, caches and the viewer keep problems by id: two rows with one id would be merged silently."""
    rows = [{"id": "aime-0", "prompt": "p", "answer": "1"}, {"id": "aime-1", "prompt": "q", "answer": "2"},
            {"id": "aime-0", "prompt": "r", "answer": "3"}]
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"dup.jsonl:3: id 'aime-0' is already the id of .*dup.jsonl:1"):
        load_jsonl(tmp_path / "dup.jsonl")


@pytest.mark.parametrize("case,msg", [
    ("missing ground truth", "rows.parquet:row 2: 'reward_model.ground_truth' must be"),
    ("messages without a user turn", "rows.parquet:row 2: 'prompt' must be a non-empty string or chat messages"),
    ("several chat turns", r"rows.parquet:row 2: 'prompt' holds 3 chat turns \(user, assistant, user\)"),
    ("not parquet", "rows.parquet: cannot be read as Parquet"),
    ("parquet named .jsonl", "rows.jsonl: this is a Parquet file"),
    ("json that is not an array", "rows.json: a .json file must hold a JSON array"),
    ("broken json", "rows.json:1: not valid JSON"),
])
def test_bad_files_of_every_kind_are_named(tmp_path, case, msg):
    from datasets import Dataset

    from stepentropy_rl.data import load_problems

    rows = verl_rows()
    path = tmp_path / "rows.parquet"
    if case == "missing ground truth":
        rows[1]["reward_model"] = {"style": "rule", "ground_truth": None}
        Dataset.from_list(rows).to_parquet(str(path))
    elif case == "messages without a user turn":
        rows[1]["prompt"] = [{"role": "system", "content": "x"}]
        Dataset.from_list(rows).to_parquet(str(path))
    elif case == "several chat turns":  # a few-shot chat: only the last question was asked, the shots dropped
        rows[1]["prompt"] = [{"role": "system", "content": "x"}, {"role": "user", "content": "1+1?"},
                             {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+2?"}]
        Dataset.from_list(rows).to_parquet(str(path))
    elif case == "not parquet":
        path.write_text("id,prompt\n1,2\n")
    elif case == "parquet named .jsonl":
        Dataset.from_list(rows).to_parquet(str(path))
        path = path.rename(tmp_path / "rows.jsonl")
    else:
        path = tmp_path / "rows.json"
        path.write_text('{"prompt": "q"}' if case == "json that is not an array" else "[{")
    with pytest.raises(DataError, match=msg):
        load_problems(path)


def test_a_numeric_answer_is_written_as_a_number_is():
    """A JSON answer 0.00005 became '5e-05' (no \\boxed{0.00005} matched it) and 72.0 became '72.0'."""
    from stepentropy_rl.data import to_example

    got = [to_example({"prompt": "q", "answer": a}, "f:1").answer for a in (0.00005, 1e16, 72.0, 3, -2.5)]
    assert got == ["0.00005", "10000000000000000", "72", "3", "-2.5"]


def test_verls_instruction_gives_way_to_the_templates_and_a_hash_answer_is_warned_about(caplog):
    """verl's GSM8K preprocessing appends its own instruction (answer after "####"); R1's template added a second,
    other one, and asked as is the model was told to write an answer no grader reads."""
    from stepentropy_rl.config import R1_INSTRUCTION
    from stepentropy_rl.data import Example, as_asked

    verl = [Example(id=str(i), prompt="How many? Let's think step by step and output the final answer after "
                                      '"####".', answer="3") for i in range(3)]
    bare = [Example(id="b", prompt="How many?", answer="3"), Example(id="c", prompt="What is the final answer to 3+4?",
                                                                     answer="7")]
    with caplog.at_level("WARNING", logger="stepentropy_rl.data"):
        asked = as_asked(verl + bare, R1_INSTRUCTION)
    assert caplog.text == "" and "####" not in asked[0].prompt  # the template's instruction replaces verl's
    assert asked[0].prompt == "How many?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert asked[4].prompt.startswith("What is the final answer to 3+4?")  # a question's own words stay
    with caplog.at_level("WARNING", logger="stepentropy_rl.data"):
        as_is = as_asked(verl, "{prompt}")
    assert "3 of 3 questions ask for the final answer after \"####\", but the graders read \\boxed{}" in caplog.text
    assert as_is[0].prompt == verl[0].prompt  # asked as configured


def test_held_out_problems_that_are_also_training_problems_are_found():
    """data.train_path naming the held-out file (MATH-500 and AIME are test sets) reported accuracy on trained
    problems without a word."""
    from stepentropy_rl.data import Example
    from stepentropy_rl.driver.run import overlap

    held = [Example(id="t0", prompt="What is 2+2?", answer="4"), Example(id="t1", prompt="Name 3.", answer="3")]
    train = [Example(id="x", prompt="what  is 2+2?", answer="4"), Example(id="y", prompt="Other.", answer="1")]
    assert overlap(held, train) == ["t0"] and overlap(held, []) == []


def test_gold_solutions_are_checked_for_the_layout_the_prune_stage_reads(tmp_path):
    """trainer.prune.source=gold prunes each row's solution as a CoT: one without </think> and a box after it was
    dropped from the SFT data as wrong without a word; now the row is named when the problems load."""
    from stepentropy_rl.data import check_gold_solution

    f = tmp_path / "t.jsonl"
    rows = [{"id": "a", "prompt": "q", "answer": "5", "solution": "Add.\n</think>\n\nThe answer is \\boxed{5}."},
            {"id": "b", "prompt": "q", "answer": "5", "solution": "Add. So \\boxed{5}."},
            {"id": "c", "prompt": "q", "answer": "5", "solution": "Add \\boxed{5}.\n</think>\n\nIt is 5."},
            {"id": "d", "prompt": "q", "answer": "5"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b, c, d = load_jsonl(f)
    check_gold_solution(a)
    with pytest.raises(DataError, match=r"t.jsonl:2: 'solution' must be thinking, then </think>.*it has no </think>"):
        check_gold_solution(b)
    with pytest.raises(DataError, match=r"t.jsonl:3: .*it has no answer box after the tag"):  # a box in the thinking
        check_gold_solution(c)
    with pytest.raises(DataError, match=r"t.jsonl:4: no 'solution'"):
        check_gold_solution(d)


def test_a_gold_solution_opening_its_thinking_is_read_without_the_tag(tmp_path):
    """R1 datasets write "<think>\n...</think>" in a solution, while the prompt already opens the thinking: the tag was
    kept in step 0, scored and prunable, and an SFT row had two of them. A leading one is dropped; one further in is
    refused."""
    from stepentropy_rl.data import check_gold_solution

    f = tmp_path / "t.jsonl"
    rows = [{"id": "a", "prompt": "q", "answer": "5", "solution": " <think>\nAdd.\n\nSo 5.\n</think>\n\n\\boxed{5}."},
            {"id": "b", "prompt": "q", "answer": "5", "solution": "Add.\n<think>\nSo 5.\n</think>\n\n\\boxed{5}."}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_jsonl(f)
    assert a.solution == "Add.\n\nSo 5.\n</think>\n\n\\boxed{5}."
    check_gold_solution(a)
    with pytest.raises(DataError, match=r"t.jsonl:2: 'solution' has <think> inside its thinking"):
        check_gold_solution(b)


def test_a_gold_run_names_a_bad_solution_when_its_problems_load(tmp_path):
    from hydra import compose, initialize_config_dir

    from stepentropy_rl.config import build
    from stepentropy_rl.driver.run import train_problems

    conf = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "conf")
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"prompt": "q", "answer": "5", "solution": "Add. So \\boxed{5}."}) + "\n")
    with initialize_config_dir(config_dir=conf, version_base=None):
        def cfg(*overrides):
            return build(compose("config", overrides=["+experiment=entropy_guided", "run_dir=/tmp/x", *overrides]),
                         check_paths=False)
        assert len(train_problems(cfg("trainer.prune.source=gold", "trainer.n_train=3"))) == 3  # the task's own
        with pytest.raises(DataError, match="train.jsonl:1: 'solution' must be thinking"):
            train_problems(cfg("data=file", "model=r1_distill_qwen_7b", f"data.path={f}", f"data.train_path={f}", "trainer.prune.source=gold"))
        assert len(train_problems(cfg("data=file", "model=r1_distill_qwen_7b", f"data.path={f}", f"data.train_path={f}"))) == 1  # policy CoTs


@pytest.mark.parametrize("content", [5, [{"type": "text", "text": "Be brief"}]])
def test_a_system_message_must_be_text(tmp_path, content):
    """OpenAI's content parts were written into every prompt as a Python list's text; a number crashed later with a
    TypeError traceback."""
    import json

    from stepentropy_rl.data import load_problems

    row = {"prompt": [{"role": "system", "content": content}, {"role": "user", "content": "q"}], "answer": "1"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:1: 'prompt' has a system message whose content is not text"):
        load_problems(tmp_path / "rows.jsonl")


def test_a_file_suffix_is_read_whatever_its_case(tmp_path):
    import json

    from stepentropy_rl.data import load_problems

    (tmp_path / "rows.JSON").write_text(json.dumps([{"prompt": "q", "answer": "1"}]))
    assert [p.answer for p in load_problems(tmp_path / "rows.JSON")] == ["1"]
