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
