"""CHAMP (Mao et al. 2024, MIT; shipped by the ``champ-dataset`` package), as the project's JSONL and verl's Parquet.

    python data/prepare_champ.py            # writes data/champ_{train,test}.{jsonl,parquet}

Of the 270 competition problems, those whose final answer is a number or a fraction are kept (math-verify grades
them without ambiguity); the rest (formulas in n, "Yes"/"No", prose) are left out. Each row carries the reference
solution in the response layout the project trains on: the solution's steps separated by blank lines, then
``\\n</think>\\n\\nThe answer is \\boxed{...}.``. Problems are split by a hash of their identifier (one in four to
test), so the split never changes when the package reorders them.
"""
from __future__ import annotations

import ast
import json
import re
import zlib
from pathlib import Path

from common import cli, response, run, write_splits

from stepentropy_rl.data import to_example

NUMERIC = re.compile(r"-?\d+(\.\d+)?(/\d+)?")


def champ_problems() -> dict:
    import champ_dataset

    return json.loads((Path(champ_dataset.__file__).parent / "dataset_files" / "v0.json").read_text())["problems"]


def convert(problems: dict) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) in the project's format, sorted by id."""
    train, test = [], []
    for pid in sorted(problems):
        p = problems[pid]
        answer = p["_answer"].strip()
        if not NUMERIC.fullmatch(answer):
            continue
        sol = p["solution"]
        steps = [s["_text"].strip() for s in (ast.literal_eval(sol) if isinstance(sol, str) else sol)["steps"]]
        thinking = "\n\n".join(s for s in steps if s)
        row = {"id": f"champ-{pid}", "prompt": p["_text"].strip(), "answer": answer,
               "solution": response(thinking, answer)}
        (test if zlib.crc32(pid.encode()) % 4 == 0 else train).append(row)
    return train, test


def main() -> None:
    args = cli(__doc__, None)
    train, test = convert(champ_problems())
    write_splits(args.out, "champ", {"train": [to_example(r, r["id"]) for r in train],
                                     "test": [to_example(r, r["id"]) for r in test]}, "champ")


if __name__ == "__main__":
    run(main)
