"""GSM8K (Cobbe et al. 2021, MIT) from a local copy in its published format, as the project's JSONL and verl's Parquet.

    python data/prepare_gsm8k.py --src path/to/gsm8k     # writes data/gsm8k_{train,test}.{jsonl,parquet}

``--src``: a folder with OpenAI's ``train.jsonl`` / ``test.jsonl`` (grade-school-math/data) or the Hugging Face
copy's ``main/train-*.parquet`` / ``main/test-*.parquet``, or one such file. Each row's ``answer`` is the worked
solution ending in ``#### <number>``: the number (thousands separators removed) is the answer to grade against; the
solution's lines, with the ``<<48/2=24>>`` calculator marks removed, are the reference thinking steps.
"""
from __future__ import annotations

import re

from common import (DataError, Example, cli, find_split, number, response, rows_of_all, run, text_field,
                    write_splits)

PATTERNS = ("{split}.jsonl", "{split}.parquet", "main/{split}-*.parquet", "{split}-*.parquet", "*/{split}.jsonl")
CALC = re.compile(r"<<[^>]*>>")


def convert(rows: list[dict], split: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        worked, question = text_field(row, "answer"), text_field(row, "question")
        steps_text, _, final = worked.rpartition("####")
        answer = number(final)
        if "####" not in worked or not question or not answer:
            raise DataError(f"gsm8k {split} row {i + 1}: needs 'question' and an 'answer' ending in '#### <number>'")
        steps = [CALC.sub("", line).strip() for line in steps_text.strip().splitlines() if line.strip()]
        out.append(Example(id=f"gsm8k-{split}-{i}", prompt=question, answer=answer,
                           solution=response("\n\n".join(steps), answer)))
    return out


def main() -> None:
    args = cli(__doc__, "a folder with GSM8K's train/test files, or one file")
    splits = {}
    for split in ("train", "test"):
        paths = find_split(args.src, split, PATTERNS)
        if paths and (args.src.is_dir() or split in paths[0].name):
            splits[split] = convert(rows_of_all(paths), split)
    if not splits:
        raise SystemExit(f"no GSM8K train/test files under {args.src} (looked for {', '.join(PATTERNS)})")
    write_splits(args.out, "gsm8k", splits, "openai/gsm8k")


if __name__ == "__main__":
    run(main)
