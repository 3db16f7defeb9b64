"""MATH-500 (Lightman et al. 2023's subset of MATH, MIT) from a local copy, as the project's JSONL and verl's Parquet.

    python data/prepare_math500.py --src path/to/test.jsonl    # writes data/math500_test.{jsonl,parquet}

``--src``: the published ``test.jsonl`` (HuggingFaceH4/MATH-500: ``problem``, ``solution``, ``answer``,
``subject``, ``level``, ``unique_id``), its Parquet form, or a folder holding it. An evaluation set: one split,
``test``. Graded with math-verify (``conf/data/math500.yaml``), which compares LaTeX answers such as
``\\frac{14}{3}`` or ``(3, \\frac{\\pi}{2})`` by value.
"""
from __future__ import annotations

from common import DataError, Example, cli, find_split, rows_of_all, run, text_field, write_splits
from common import problem as as_problem

PATTERNS = ("test.jsonl", "test.parquet", "test-*.parquet", "*/test.jsonl", "*/test-*.parquet")


def convert(rows: list[dict]) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        problem, answer = text_field(row, "problem"), text_field(row, "answer")
        if not problem or not answer:
            raise DataError(f"math500 row {i + 1}: needs 'problem' and 'answer'")
        out.append(as_problem(row.get("unique_id") or f"math500-{i}", problem, answer, row.get("solution")))
    return out


def main() -> None:
    args = cli(__doc__, "MATH-500's test.jsonl (or .parquet), or a folder holding it")
    paths = find_split(args.src, "test", PATTERNS)
    if not paths:
        raise SystemExit(f"no MATH-500 test file under {args.src} (looked for {', '.join(PATTERNS)})")
    write_splits(args.out, "math500", {"test": convert(rows_of_all(paths))}, "HuggingFaceH4/MATH-500")


if __name__ == "__main__":
    run(main)
