"""Look at the chains of thought of a run: one self-contained HTML page.

    python -m stepentropy_rl.view RUN_DIR [--out FILE] [--limit N]

Reads the study's ``cots.jsonl`` and each eval's ``eval/<model>.cots.jsonl`` (``cot_record``). The page shades every
step (or token) by its entropy, strikes through the steps a strategy pruned at the ratio the slider picks, marks
``[SKIP]`` steps and labelled redundant/essential steps, and shows the (regenerated) answer and whether it was right.
The state is kept in the URL's ``#`` part, so a view can be linked. Nothing is fetched: the data sits in the page.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import resources
from pathlib import Path

EVAL_ORDER = ("base", "sft", "final")


def _read(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with path.open() as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line, parse_constant=lambda _: None)  # a NaN entropy shows as n/a
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: a line is not JSON ({e})") from None
                row["id"] = str(row["id"])
                rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows


def sources(run_dir: Path, limit: int | None = None) -> list[dict]:
    """The run's CoT sources: the study's (with its strategies and ratios), then each eval, base -> sft -> final."""
    out = []
    if (run_dir / "cots.jsonl").exists():
        recs = _read(run_dir / "cots.jsonl", limit)
        variants = [v for r in recs for v in r.get("variants", [])]
        out.append({"name": "study", "kind": "study", "records": recs,
                    "strategies": list(dict.fromkeys(v["strategy"] for v in variants)),
                    "ratios": sorted({v["ratio"] for v in variants})})
    evals = sorted((run_dir / "eval").glob("*.cots.jsonl")) if (run_dir / "eval").is_dir() else []
    rank = {name: i for i, name in enumerate(EVAL_ORDER)}
    for path in sorted(evals, key=lambda p: (rank.get(p.name.split(".")[0], len(rank)), p.name)):
        out.append({"name": f"eval: {path.name.split('.')[0]}", "kind": "eval", "records": _read(path, limit)})
    return out


def render(run_dir: Path, limit: int | None = None) -> str:
    """The page for ``run_dir``; raises FileNotFoundError when the run saved no CoTs."""
    srcs = sources(run_dir, limit)
    if not srcs:
        raise FileNotFoundError(f"{run_dir} holds no cots.jsonl and no eval/*.cots.jsonl: nothing to view (runs "
                                "written before the viewer existed did not save their CoTs)")
    title = f"CoTs of {run_dir.resolve().name}"
    data = json.dumps({"title": title, "sources": srcs}, ensure_ascii=False, allow_nan=False)
    page = resources.files("stepentropy_rl").joinpath("view.html").read_text(encoding="utf-8")
    # model output is arbitrary text: no < > & may reach the data <script> ("</script>" would close it, "<!--<script>"
    # would swallow the page's code), as JSON escapes; the title is a directory name, as HTML entities. One pass, so
    # that nothing inserted is read for a placeholder again (a directory named __DATA__)
    fill = {"TITLE": title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),
            "DATA": data.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")}
    return re.sub(r"__(TITLE|DATA)__", lambda m: fill[m.group(1)], page)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stepentropy_rl.view", description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a run directory (the main job's or the study's)")
    ap.add_argument("--out", type=Path, default=None, help="the page to write (default RUN_DIR/view.html)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many CoTs per source")
    args = ap.parse_args(argv)
    try:
        page = render(args.run_dir, args.limit)
    except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "view.html"
    from stepentropy_rl.files import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    print(f"wrote {out} ({len(page) / 1e6:.1f} MB); open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
