"""The CoT viewer in a real headless Chromium: the study (run on in-process workers whose entropy is an oracle) and an
eval whose model writes [SKIP], rendered by ``python -m stepentropy_rl.view``, loaded, operated through its
controls, and photographed."""
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from stepentropy_rl.data import write_jsonl
from stepentropy_rl.driver.evaluate import evaluate
from stepentropy_rl.driver.study import run_study
from stepentropy_rl.tasks.grading import exact_match
from stepentropy_rl.tokenizer import encode
from tests.chromium import Browser, chromium_binary
from tests.unit.test_prune_study import FakeReference, FakeRollout, study_inputs


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    chromium_binary()
    probs, tok, cfg = study_inputs()
    run = tmp_path_factory.mktemp("run")
    roll = FakeRollout(probs)
    roll.tok = tok
    res = run_study(cfg, probs, roll, FakeReference(tok), tok, exact_match)
    write_jsonl(run / "cots.jsonl", res.cots)
    skipped = []
    for p in probs:  # the final model: every redundant step written as [SKIP]
        text = "\n\n".join("[SKIP]" if s["label"] == "redundant" else s["text"] for s in p.steps)
        text += p.solution[p.solution.index("\n</think>"):]
        ids = encode(tok, text)
        skipped.append([{"text": text, "token_ids": ids, "finish_reason": "stop",
                         "topk_logprobs": [[-0.05 * (j % 5), -3.0] for j in range(len(ids))]}])
    out = evaluate(SimpleNamespace(generate=lambda *a: skipped), tok, probs, exact_match, {"logprobs": 2}, cots=True)
    (run / "eval").mkdir()
    write_jsonl(run / "eval" / "final.cots.jsonl", out["cots"])
    proc = subprocess.run([sys.executable, "-m", "stepentropy_rl.view", str(run)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return run / "view.html", res


def test_the_page_loads_with_every_source_and_no_script_error(page):
    path, res = page
    with Browser() as b:
        b.open(path.as_uri())
        assert b.eval("[...document.querySelectorAll('#source option')].map(o => o.textContent)") == [
            f"study ({len(res.cots)})", f"eval: final ({len(res.cots)})"]
        first = res.cots[0]
        assert b.eval("document.querySelectorAll('#steps .step').length") == len(first["steps"])
        assert b.eval("document.querySelector('#question').textContent").endswith(first["prompt"])
        assert b.console == []


def test_the_ratio_control_strikes_through_the_steps_the_strategy_pruned(page):
    path, res = page
    first = res.cots[0]
    with Browser() as b:
        b.open(path.as_uri())
        assert b.eval("document.querySelectorAll('.step.pruned').length") == 0  # ratio 0.0 first
        ratios = b.eval("DATA.sources[0].ratios")
        top = ratios.index(0.2)  # fewer steps than the redundant ones
        b.eval(f"(() => {{ const r = document.getElementById('ratio'); r.value = '{top}';"
               "r.dispatchEvent(new Event('input')); })()")
        want = next(v for v in first["variants"] if v["strategy"] == "low" and v["ratio"] == ratios[top])
        struck = b.eval("[...document.querySelectorAll('.step.pruned')].map(e => Number(e.dataset.index))")
        assert struck == want["pruned"] and len(struck) > 0
        assert b.eval("[...document.querySelectorAll('.step.pruned .text')].every(e => "
                      "getComputedStyle(e).textDecorationLine === 'line-through')")
        # the oracle gives redundant steps the low entropy, so low-first pruning strikes exactly those
        assert set(b.eval("[...document.querySelectorAll('.step.pruned')].map(e => e.dataset.label)")) == {
            "redundant"}
        verdict = b.eval("document.getElementById('verdict').textContent")
        assert verdict.endswith("right" if want["correct"] else "wrong") and "regenerated" in verdict
        assert b.eval("location.hash").startswith("#source=0")
        # the other strategy at the same ratio strikes the high-entropy (essential) steps and loses the answer
        b.eval("(() => { const s = document.getElementById('strategy'); s.value = 'high';"
               "s.dispatchEvent(new Event('change')); })()")
        assert "essential" in b.eval("[...document.querySelectorAll('.step.pruned')].map(e => e.dataset.label)")
        assert b.eval("document.getElementById('verdict').className") == "verdict wrong"


def test_steps_are_shaded_by_entropy_and_a_link_restores_the_view(page, tmp_path):
    path, res = page
    first = res.cots[0]
    with Browser() as b:
        b.open(path.as_uri())
        alpha = b.eval("[...document.querySelectorAll('#steps .step')].map(e => "
                       "parseFloat(getComputedStyle(e).backgroundColor.split(',')[3]))")
        for s, a in zip(first["steps"], alpha):  # essential steps (entropy 2.0 per token) shade darker
            assert (a > 0.5) == (s["label"] == "essential")
        b.eval("(() => { const s = document.getElementById('shade'); s.value = 'token';"
               "s.dispatchEvent(new Event('change')); })()")
        in_text = [t for s in first["steps"] for t in first["tokens"][s["tok"][0]:s["tok"][1]]
                   if min(t[1], s["end"]) > max(t[0], s["start"])]  # all but the blank-line tokens
        assert b.eval("document.querySelectorAll('#steps .tok').length") == len(in_text) > 0.8 * len(first["tokens"])
        link = b.eval("location.hash")
    with Browser() as b:
        b.open(path.as_uri() + link.replace("shade=token", "shade=step").replace("source=0", "source=1"))
        assert b.eval("document.getElementById('pruning').classList.contains('hidden')")  # an eval: no slider
        skips = b.eval("document.querySelectorAll('.step.skip').length")
        assert skips == sum(s["label"] == "redundant" for s in first["steps"]) > 0
        assert b.eval("document.getElementById('verdict').textContent") == "the model's answer: right"
        shot = b.screenshot(tmp_path / "eval.png")
        b.open(path.as_uri() + "#source=0&strategy=low&ratio=0.8")
        shot = b.screenshot(tmp_path / "study.png")
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 900)
    px = np.asarray(img).reshape(-1, 3).astype(int)
    orange = int(((px[:, 0] > 240) & (px[:, 1] > 150) & (px[:, 1] < 235) & (px[:, 2] < 200)).sum())
    assert orange > 5000, "the entropy shading is not on the screen"
    print(json.dumps({"screenshot": str(shot), "orange_pixels": orange}))
