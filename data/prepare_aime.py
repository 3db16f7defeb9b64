"""AIME problems from a local copy in one of their published formats, as the project's JSONL and verl's Parquet.

    python data/prepare_aime.py --src path/to/aime_2024.jsonl   # writes data/aime_test.{jsonl,parquet}

``--src``: a ``.jsonl``, ``.json`` or ``.parquet`` file (or a folder of them) with a problem and an integer answer
per row, under any of the published spellings: ``problem``/``answer`` (AI-MO/aimo-validation-aime, with ``id``,
``solution``, ``url``), ``Problem``/``Answer`` (Maxwell-Jia/AIME_2024, with ``ID``, ``Solution``) or
``question``/``answer`` (AIME 2025 copies). AIME answers are integers from 0 to 999; a row with another answer is
an error naming it. An evaluation set: one split, ``test``.
"""
from __future__ import annotations

from pathlib import Path

from common import DataError, Example, cli, number, rows_of, run, text_field, write_splits
from common import problem as as_problem

KINDS = ("*.jsonl", "*.json", "*.parquet")


def convert(rows: list[dict], where: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        problem = text_field(row, "problem") or text_field(row, "question")
        answer = number(text_field(row, "answer"))
        if not problem or not answer.lstrip("0").isdigit() and answer != "0":
            raise DataError(f"{where} row {i + 1}: needs a problem and an integer answer (got {answer!r})")
        answer = str(int(answer))
        if not 0 <= int(answer) <= 999:
            raise DataError(f"{where} row {i + 1}: an AIME answer is 0-999, got {answer}")
        out.append(as_problem(problem_id(row, Path(where).stem, i), problem, answer, row.get("solution")))
    return out


def problem_id(row: dict, stem: str, i: int) -> str:
    """The row's own id where it names the problem ("2024-I-1"); a number (AIMO's and some 2025 copies' 0..N) is its
    place in its file, so it gets the file's name, as a row without one does: two such files in one folder would
    otherwise share their ids (and id 0 read as none)."""
    own = text_field(row, "id")  # keys are lower-cased (rows_of)
    if not own:
        return f"aime-{stem}-{i}"
    return f"aime-{stem}-{own}" if own.isdigit() else own


def main() -> None:
    args = cli(__doc__, "an AIME file (.jsonl, .json, .parquet) or a folder of them")
    files = [args.src] if args.src.is_file() else sorted(p for k in KINDS for p in args.src.glob(k))
    if not files:
        raise SystemExit(f"no AIME files under {args.src} (looked for {', '.join(KINDS)})")
    examples = once_each([e for f in files for e in convert(rows_of(f), str(f))])
    write_splits(args.out, "aime", {"test": examples}, "aime")


def once_each(examples: list[Example]) -> list[Example]:
    """Each problem once: a folder may hold the same year in two formats (a download's ``.parquet`` beside its
    ``.jsonl``, or this script's own output), which would weigh those problems twice in the accuracy. The same text
    with another answer is an error."""
    seen: dict[str, Example] = {}
    for e in examples:
        key = " ".join(e.prompt.split())
        if key in seen and seen[key].answer != e.answer:
            raise DataError(f"problem {e.id!r} is {seen[key].id!r} with another answer ({e.answer} against "
                            f"{seen[key].answer}): two versions of one problem")
        seen.setdefault(key, e)
    if len(seen) < len(examples):
        print(f"aime: {len(examples) - len(seen)} problems read twice (the same text in two files) kept once")
    return list(seen.values())


if __name__ == "__main__":
    run(main)
