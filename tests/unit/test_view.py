"""CoT records (what the study and the evals save for the viewer) and the page ``python -m stepentropy_rl.view``
writes from them."""
import dataclasses
import json

import pytest

from stepentropy_rl import view
from stepentropy_rl.cot_record import cot_record, step_texts
from stepentropy_rl.data import generated
from stepentropy_rl.tasks.basket import BasketConfig, label_step
from stepentropy_rl.tokenizer import encode, train_tokenizer


@pytest.fixture(scope="module")
def task():
    problems = generated(BasketConfig(redundancy=0.6), 4, 0, "test")
    tok = train_tokenizer([p.prompt + "\n" + p.solution for p in generated(BasketConfig(), 200, 1, "train")], 400)
    return problems, tok


def test_a_record_tiles_the_thinking_into_labelled_steps_with_token_entropies(task):
    problems, tok = task
    p = problems[0]
    ids = encode(tok, p.solution)
    ent = [0.01 * (j % 7) for j in range(len(ids))]
    rec = cot_record(tok, ids, ent, labeler=label_step)
    assert step_texts(rec) == [s["text"].strip() for s in p.steps]
    assert [s["label"] for s in rec["steps"]] == [s["label"] for s in p.steps]
    assert rec["closed"] and "\\boxed{" + p.answer + "}" in rec["answer_text"]
    # the steps own consecutive token ranges that cover every thinking token, and a step's entropy is their sum
    assert rec["steps"][0]["tok"][0] == 0 and rec["steps"][-1]["tok"][1] == len(rec["tokens"])
    assert all(a["tok"][1] == b["tok"][0] for a, b in zip(rec["steps"], rec["steps"][1:]))
    for s in rec["steps"]:
        assert s["entropy"] == pytest.approx(sum(ent[s["tok"][0]:s["tok"][1]]))
    assert "".join(rec["thinking"][a:b] for a, b, _ in rec["tokens"]) == rec["thinking"]
    assert len(rec["tokens"]) < len(ids)  # </think> and the answer are not thinking tokens


def test_a_record_without_entropies_or_labels_and_a_short_entropy_list(task):
    problems, tok = task
    ids = encode(tok, problems[1].solution)
    rec = cot_record(tok, ids, None)
    assert all(s["entropy"] is None and s["label"] is None for s in rec["steps"])
    assert all(t[2] is None for t in rec["tokens"])
    with pytest.raises(ValueError, match="token entropies"):
        cot_record(tok, ids, [0.0] * 3)
    never_closed = cot_record(tok, encode(tok, "Now a.\n\nNow b"), None)
    assert not never_closed["closed"] and never_closed["answer_text"] == "" and len(never_closed["steps"]) == 2


def test_eval_saves_each_cot_with_policy_entropies_verdict_and_first_mistake(task):
    from types import SimpleNamespace

    from stepentropy_rl.driver.evaluate import evaluate
    from stepentropy_rl.tasks.grading import exact_match

    problems, tok = task
    wrong = problems[1].solution.replace("Now ", "Now Zed ", 1)
    texts = [problems[0].solution, wrong]
    samples = []
    for t in texts:
        ids = encode(tok, t)
        samples.append([{"text": t, "token_ids": ids, "finish_reason": "stop",
                         "topk_logprobs": [[-0.1, -2.4] for _ in ids]}])
    roll = SimpleNamespace(generate=lambda prompts, sampling: samples)
    res = evaluate(roll, tok, problems[:2], exact_match, {"logprobs": 2}, cots=True)
    good, bad = res["cots"]
    assert good["id"] == problems[0].id and good["correct"] and good["mistake"] is None
    assert bad["mistake"] is not None
    assert good["entropy_source"] == "vLLM top-2 log-probs"
    assert all(t[2] > 0 for t in good["tokens"]) and all(s["label"] in ("essential", "redundant")
                                                           for s in good["steps"])
    assert "cots" not in evaluate(roll, tok, problems[:2], exact_match, {})  # only when asked
    # unlabelled problems have no first mistake to tell: the page said "every step right" of every CoT
    bare = [dataclasses.replace(p, steps=[]) for p in problems[:2]]
    assert all("mistake" not in r for r in evaluate(roll, tok, bare, exact_match, {"logprobs": 2}, cots=True)["cots"])


def _record(tok, text, **extra):
    return {"id": "p0", "prompt": "Ann has 3 apples.", "answer": "3", "correct": True, "entropy_source": "test",
            **cot_record(tok, encode(tok, text), [0.5] * len(encode(tok, text))), **extra}


def test_the_page_carries_all_sources_and_model_output_cannot_break_out_of_it(task, tmp_path):
    problems, tok = task
    (tmp_path / "eval").mkdir()
    hostile = "Now </script><script>alert(1)</script> & <b> <!--<script> <img src=x onerror=alert(2)>.\n\n" \
        + problems[0].solution
    for name in ("final", "base", "sft"):
        (tmp_path / "eval" / f"{name}.cots.jsonl").write_text(json.dumps(_record(tok, hostile)) + "\n")
    study = _record(tok, problems[0].solution, variants=[
        {"strategy": "low", "ratio": 0.5, "pruned": [1], "regenerated": "x", "correct": False, "thinking_tokens": 9},
        {"strategy": "low", "ratio": 0.0, "pruned": [], "regenerated": "y", "correct": True, "thinking_tokens": 12}])
    (tmp_path / "cots.jsonl").write_text(json.dumps(study) + "\n")
    srcs = view.sources(tmp_path)
    assert [s["name"] for s in srcs] == ["study", "eval: base", "eval: sft", "eval: final"]
    assert srcs[0]["ratios"] == [0.0, 0.5] and srcs[0]["strategies"] == ["low"]
    page = view.render(tmp_path)
    assert page.count("</script>") == 2  # the data script and the code: the CoT's tag is escaped
    data = page.split('<script type="application/json" id="data">')[1].split("</script>")[0]
    # no < > & at all in the data: "<!--<script>" put the parser in a state where the page's code never ran
    assert not set("<>&") & set(data)
    assert json.loads(data)["sources"][1]["records"][0]["thinking"].startswith("Now </script><script>")
    # a run directory named like a placeholder is text, not a second copy of the data (which ran the img's onerror)
    named = tmp_path.parent / "r__DATA__x"
    named.mkdir()
    (named / "cots.jsonl").write_text(json.dumps(study) + "\n")
    assert view.render(named).count('"sources"') == 1


def test_a_nan_in_one_record_shows_as_n_a_and_the_page_is_written(task, tmp_path):
    """One NaN entropy (a degenerate sample's top-k log-probs) stopped the viewer: 'Out of range float values'."""
    problems, tok = task
    (tmp_path / "eval").mkdir()
    rec = _record(tok, problems[0].solution)
    rec["tokens"][0][2] = float("nan")
    (tmp_path / "eval" / "final.cots.jsonl").write_text(json.dumps(rec) + "\n")
    assert view.main([str(tmp_path)]) == 0
    data = (tmp_path / "view.html").read_text().split('<script type="application/json" id="data">')[1]
    assert json.loads(data.split("</script>")[0])["sources"][0]["records"][0]["tokens"][0][2] is None


def test_the_cli_writes_the_page_or_says_in_one_line_why_not(task, tmp_path, capsys):
    problems, tok = task
    assert view.main([str(tmp_path)]) == 2
    assert "nothing to view" in capsys.readouterr().err
    (tmp_path / "cots.jsonl").write_text(json.dumps(_record(tok, problems[0].solution, variants=[])) + "\n")
    assert view.main([str(tmp_path), "--out", str(tmp_path / "v.html")]) == 0
    assert (tmp_path / "v.html").read_text().startswith("<!DOCTYPE html>")
    assert view.main([str(tmp_path), "--out", str(tmp_path / "pages" / "v.html")]) == 0  # a traceback: no pages/
    with (tmp_path / "cots.jsonl").open("a") as f:
        f.write('{"id": 1,\n')
    assert view.main([str(tmp_path)]) == 2 and "cots.jsonl: a line is not JSON" in capsys.readouterr().err
