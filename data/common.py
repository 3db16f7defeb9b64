"""What every ``data/prepare_*.py`` shares: reading a local copy in its published format, and writing each split
twice, as the project's JSONL (``<name>_<split>.jsonl``) and as verl's Parquet (``<name>_<split>.parquet``)."""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from stepentropy_rl.data import DataError, Example, read_rows, to_verl_row
from stepentropy_rl.files import atomic_write_text

HERE = Path(__file__).resolve().parent
BOXED_LAYOUT = "{thinking}\n</think>\n\nThe answer is \\boxed{{{answer}}}."


def response(thinking: str, answer: str) -> str:
    """A reference solution in the layout the project trains on: the steps, ``</think>``, the boxed answer."""
    return BOXED_LAYOUT.format(thinking=thinking.strip(), answer=answer)


def problem(pid: str, prompt: str, answer: str, solution) -> Example:
    """An ``Example`` whose reference solution, when the source has one, is put in the training layout."""
    solution = str(solution or "").strip()
    return Example(id=str(pid), prompt=prompt, answer=answer, solution=response(solution, answer) if solution else None)


def rows_of(path: Path) -> list[dict]:
    """The raw rows of a local file (``.jsonl``, ``.json``, ``.parquet``), lower-cased keys; errors name the row."""
    rows = []
    for where, row in read_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be an object, got {type(row).__name__}")
        rows.append({str(k).lower(): v for k, v in row.items()})
    return rows


def text_field(row: dict, key: str) -> str:
    """``row[key]`` as stripped text: a string, or a finite number; anything else (None, a list) is ``""``, which
    the scripts refuse, rather than the text ``"None"``."""
    value = row.get(key)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        from stepentropy_rl.data import number_text

        return number_text(value)
    return ""


def find_split(src: Path, split: str, patterns: tuple[str, ...]) -> list[Path]:
    """The files under ``src`` of the first of ``patterns`` (formatted with ``split``) that matches any, in order: every
    shard of a split saved in several (``test-00000-of-00002.parquet``, ...), where the first alone lost the rest's
    rows without a word; ``[src]`` when it is a file, ``[]`` when nothing matches."""
    if src.is_file():
        return [src]
    for pattern in patterns:
        hits = sorted(src.glob(pattern.format(split=split)))
        if hits:
            return hits
    return []


def rows_of_all(paths: list[Path]) -> list[dict]:
    """:func:`rows_of` each file, one after another (a split's shards)."""
    return [row for path in paths for row in rows_of(path)]


def write_splits(out_dir: str | Path, name: str, splits: dict[str, list[Example]], data_source: str) -> None:
    """Each split as ``<name>_<split>.jsonl`` (project) and ``<name>_<split>.parquet`` (verl), and a line each."""
    from datasets import Dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        if not examples:
            continue
        seen: dict[str, int] = {}
        for i, e in enumerate(examples):
            if e.id in seen:
                raise DataError(f"{name} {split}: rows {seen[e.id] + 1} and {i + 1} have one id {e.id!r}; the loader "
                                f"would refuse the file")
            seen[e.id] = i
        rows = [{"id": e.id, "prompt": e.prompt, "answer": e.answer,
                 **({"solution": e.solution} if e.solution else {}), **({"steps": e.steps} if e.steps else {})}
                for e in examples]
        atomic_write_text(out / f"{name}_{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        verl = [to_verl_row(e, data_source, split, i) for i, e in enumerate(examples)]
        Dataset.from_list(verl).to_parquet(str(out / f"{name}_{split}.parquet"))
        print(f"{out / name}_{split}.jsonl / .parquet: {len(examples)} problems")


def number(text: str) -> str:
    """A numeric answer as graders compare it: thousands separators and surrounding space removed."""
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", str(text)).strip()


def cli(doc: str, src_help: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if src_help:
        ap.add_argument("--src", required=True, type=Path, help=src_help)
    ap.add_argument("--out", type=Path, default=HERE, help="where the files go (default: data/)")
    return ap.parse_args()


def run(main) -> None:
    """Run a prepare script's ``main``: bad data ends it with the message that names the row, not a traceback."""
    try:
        main()
    except DataError as e:
        raise SystemExit(f"error: {e}") from None


__all__ = ["DataError", "Example", "cli", "find_split", "number", "problem", "response", "rows_of", "rows_of_all",
           "run", "text_field", "write_splits"]
