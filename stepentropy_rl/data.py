"""Problems for the pipeline: generated from the embedded task, or read from a JSONL file in the project's format.

Format, one JSON object a line::

    {"id": "gsm8k-17", "prompt": "question text", "answer": "42",
     "solution": "optional reference response", "steps": [{"text": ..., "label": "essential"|"redundant"}]}

``prompt`` and ``answer`` are required; a malformed row raises ``DataError`` naming the file and line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stepentropy_rl.files import atomic_write_jsonl
from stepentropy_rl.tasks.basket import BasketConfig, generate


class DataError(ValueError):
    """A data file or row that cannot be used."""


@dataclass
class Example:
    """One problem: its prompt, the answer to grade against, and (embedded task) a gold solution with step labels."""

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    steps: list = field(default_factory=list)  # [{"text", "label", "kind"}] when known
    where: str = ""  # "file:line" of a row read from a file, for error messages


def load_jsonl(path: str | Path) -> list[Example]:
    """Every row of a JSONL file as an ``Example``; a ``DataError`` naming ``file:line`` for a row that is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path: no such file {str(path)!r}")
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:  # a UTF-8 byte-order mark (Windows editors write one) is dropped from the first line
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column "
                                f"{e.start + 1}); re-save the file as UTF-8") from None
            if not line.strip():
                continue
            rows.append(parse_row(line, f"{path}:{lineno}"))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def parse_row(line: str, where: str) -> Example:
    """One JSON row (``prompt``, ``answer``; optional ``id``, ``solution``, ``steps``); ``where`` names it in errors."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    prompt, answer = row.get("prompt"), row.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: 'prompt' must be a non-empty string")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: 'answer' must be a non-empty string or number")
    steps = row.get("steps") or []
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in steps):
        raise DataError(f"{where}: 'steps' must be a list of objects with a 'text' string")
    return Example(id=str(row.get("id", where)), prompt=prompt, answer=answer.strip(),
                   solution=row.get("solution"), steps=steps, where=where)


def generated(task: BasketConfig, n: int, seed: int, split: str) -> list[Example]:
    """``n`` embedded-task problems of ``split`` (``tasks.basket.generate``) as Examples, gold steps labelled."""
    return [Example(**{k: v for k, v in p.to_row().items()}) for p in generate(task, n, seed, split)]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows atomically (temp file, then rename): a crash never leaves a half-written file."""
    atomic_write_jsonl(path, rows)
