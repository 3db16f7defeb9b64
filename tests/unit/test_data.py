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
    ('{"prompt": "q", "answer": "1", "steps": "no"}', "'steps'"),
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


def test_shipped_champ_files_are_what_the_converter_writes(tmp_path):
    """data/champ_*.jsonl are data/convert_champ.py's output on the champ-dataset package, row for row."""
    import importlib.util
    import json
    from pathlib import Path

    import pytest

    pytest.importorskip("champ_dataset")
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("convert_champ", root / "data" / "convert_champ.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(str(tmp_path))
    for name in ("champ_train.jsonl", "champ_test.jsonl"):
        assert (tmp_path / name).read_text() == (root / "data" / name).read_text()
    rows = [json.loads(line) for line in (root / "data" / "champ_test.jsonl").read_text().splitlines()]
    assert all("\n</think>\n\nThe answer is \\boxed{" + r["answer"] + "}." in r["solution"] for r in rows)
    from stepentropy_rl.data import load_jsonl

    assert len(load_jsonl(root / "data" / "champ_train.jsonl")) == 72 and len(rows) == 13
