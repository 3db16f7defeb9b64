"""Problems for the pipeline: generated from the embedded task, or read from a file or a dataset directory.

``load_problems(path)`` reads, by what ``path`` is:

- ``.jsonl``: the project's format, one JSON object a line::

    {"id": "gsm8k-17", "prompt": "question text", "answer": "42",
     "solution": "optional reference response", "steps": [{"text": ..., "label": "essential"|"redundant"}]}

- ``.json``: a JSON array of such objects;
- ``.parquet``: verl's schema (``prompt`` as chat messages, ``data_source``, ``reward_model.ground_truth``,
  ``extra_info``), as verl's ``examples/data_preprocess`` scripts and ``data/prepare_*.py`` write it, or flat rows;
- a directory: a Hugging Face dataset saved with ``save_to_disk``, or a folder of data files ``datasets`` can read
  (a hub snapshot); a ``DatasetDict`` gives its ``test`` split for evaluation and ``train`` for training.

The prompt is ``prompt_key`` (a string, or chat messages: one user message, the question, and an optional system
message); the answer is ``answer_key`` (dotted for nested fields; by default ``answer``, else verl's
``reward_model.ground_truth``). A row that cannot be used raises ``DataError`` naming ``file:line`` (``file:row N``
for Parquet and datasets).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from stepentropy_rl.cot_format import THINK_CLOSE, THINK_OPEN, boxed_span, split_thinking
from stepentropy_rl.files import atomic_write_jsonl
from stepentropy_rl.tasks.basket import BasketConfig, generate

log = logging.getLogger(__name__)
# how a question already says where its answer goes (verl's preprocessing appends "... after \"####\"." to GSM8K's
# questions and "... within \boxed{}." to MATH's)
ANSWER_INSTRUCTION = re.compile(r'final answer (after "####"|within \\boxed\{\})')
# verl's preprocessing appends this sentence to every question (gsm8k: after "####", math: within \boxed{})
VERL_INSTRUCTION = re.compile(r'\s*Let\'s think step by step and output the final answer '
                              r'(?:after "####"|within \\boxed\{\})\.?\s*$')

VERL_ANSWER = "reward_model.ground_truth"


class DataError(ValueError):
    """A data file or row that cannot be used."""


@dataclass
class Example:
    """One problem: its prompt, the answer to grade against, and (embedded task) a gold solution with step labels.
    ``data_source`` and ``extra_info`` are verl's, passed on to custom reward functions."""

    id: str
    prompt: str
    answer: str
    solution: str | None = None
    steps: list = field(default_factory=list)  # [{"text", "label", "kind"}] when known
    where: str = ""  # "file:line" of a row read from a file, for error messages
    system: str | None = None  # a system message that came with the row (verl's chat prompts)
    data_source: str = ""
    extra_info: dict = field(default_factory=dict)
    chat_kwargs: dict = field(default_factory=dict)  # to the chat template (data.chat_template_kwargs)


def as_asked(problems: list[Example], template: str = "{prompt}", system: str | None = None,
             chat_kwargs: dict | None = None) -> list[Example]:
    """The problems as the model is asked them: the question put into ``template`` at ``{prompt}``, ``system`` as
    the system message where a row has none, ``chat_kwargs`` for the chat template. Where the template says where
    the answer goes, verl's appended instruction (``VERL_INSTRUCTION``) is taken off the questions: the model would be
    told twice, in two ways; where it does not, questions told to answer after "####" are warned about (the graders
    read ``\\boxed{}``: an obedient answer would be graded wrong)."""
    own = bool(ANSWER_INSTRUCTION.search(template.replace("{prompt}", "")))
    told = [p for p in problems if VERL_INSTRUCTION.search(p.prompt)]
    if told and own:
        log.info("%d of %d questions carried verl's answer instruction; data.prompt_template's replaces it",
                 len(told), len(problems))
        problems = [dataclasses.replace(p, prompt=VERL_INSTRUCTION.sub("", p.prompt))
                    if VERL_INSTRUCTION.search(p.prompt) else p for p in problems]
    hashes = sum('after "####"' in p.prompt for p in problems)
    if hashes and not own:
        log.warning("%d of %d questions ask for the final answer after \"####\", but the graders read \\boxed{}: an "
                    "answer that obeys is graded wrong. Set data.prompt_template to one that asks for \\boxed{} "
                    "(R1's, as data=file has), which replaces verl's instruction", hashes, len(problems))
    return [dataclasses.replace(p, prompt=template.replace("{prompt}", p.prompt), system=p.system or system,
                                chat_kwargs=dict(chat_kwargs or {})) for p in problems]


def number_text(x: int | float) -> str:
    """A number as its answer is written: positional, never scientific (``str(0.00005)`` is ``5e-05``, which no
    ``\\boxed{0.00005}`` matches), a whole float as an integer (72.0 -> 72).

    >>> number_text(0.00005), number_text(1e16), number_text(72.0), number_text(-3), number_text(2.5)
    ('0.00005', '10000000000000000', '72', '-3', '2.5')
    """
    if isinstance(x, float):
        if x.is_integer():
            return str(int(x))
        import numpy as np

        return np.format_float_positional(x, trim="-")
    return str(x)


def load_problems(path: str | Path, prompt_key: str = "prompt", answer_key: str | None = None,
                  split: str = "test") -> list[Example]:
    """Every row of ``path`` (see the module doc) as an ``Example``; ``split``: which split of a ``DatasetDict``.
    Two rows with one id are a ``DataError``: results, caches and the viewer key problems by id, and would merge them."""
    problems = [to_example(row, where, prompt_key, answer_key) for where, row in read_rows(path, split)]
    first: dict[str, str] = {}
    for p in problems:
        if p.id in first:
            raise DataError(f"{p.where}: id {p.id!r} is already the id of {first[p.id]}; every problem needs its own "
                            f"id (results are kept by id)")
        first[p.id] = p.where
    return problems


def load_jsonl(path: str | Path, prompt_key: str = "prompt", answer_key: str | None = None) -> list[Example]:
    """Every row of a JSONL file as an ``Example`` (``load_problems`` of a ``.jsonl`` file)."""
    return load_problems(path, prompt_key, answer_key)


def read_rows(path: str | Path, split: str = "test") -> list[tuple[str, object]]:
    """``(where, row)`` for every row of ``path`` as it is stored (any kind in the module doc); ``where`` is
    ``file:line`` or ``file:row N``. A file that cannot be read, or holds no rows, raises ``DataError``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data.path: no such file {str(path)!r}{prepare_hint(path)}")
    if path.is_dir():
        rows = _dataset_rows(path, split)
    elif path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path)
    elif path.suffix.lower() == ".json":
        rows = _json_rows(path)
    else:
        rows = _jsonl_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _jsonl_rows(path: Path) -> list[tuple[str, object]]:
    rows = []
    with path.open("rb") as f:
        if f.read(4) == b"PAR1":  # verl's datasets are Parquet: read as one, not as broken text
            raise DataError(f"{path}: this is a Parquet file; give it the .parquet suffix")
        f.seek(0)
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:  # a UTF-8 byte-order mark (Windows editors write one) is dropped from the first line
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column "
                                f"{e.start + 1}); re-save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            except ValueError as e:  # an integer past Python's 4300 digits
                raise DataError(f"{where}: not readable JSON ({e})") from None
    return rows


def to_example(row, where: str, prompt_key: str = "prompt", answer_key: str | None = None) -> Example:
    """One row (a dict) as an ``Example``: the prompt and answer checked, verl's chat prompt and ground truth read."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    prompt, system = _prompt(row.get(prompt_key), where, prompt_key)
    key = answer_key or ("answer" if "answer" in row or "reward_model" not in row else VERL_ANSWER)
    answer = _get(row, key)
    if isinstance(answer, float) and not math.isfinite(answer):  # JSON's NaN: a missing value, not an answer
        raise DataError(f"{where}: '{key}' is {answer} (a missing value)")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = number_text(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string or number")
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    steps = row.get("steps") or _json_list(extra.get("steps"))  # verl's Parquet (to_verl_row) keeps them as text
    if not isinstance(steps, list) or not all(isinstance(s, dict) and isinstance(s.get("text"), str) for s in steps):
        raise DataError(f"{where}: 'steps' must be a list of objects with a 'text' string")
    solution = row.get("solution") or extra.get("solution") or None
    if solution is not None and not isinstance(solution, str):
        raise DataError(f"{where}: 'solution' must be a string, got {type(solution).__name__}")
    if solution is not None and solution.lstrip().startswith(THINK_OPEN):  # R1 data's layout; the prompt opens it
        solution = solution.lstrip()[len(THINK_OPEN):].removeprefix("\n")
    source = str(row.get("data_source") or "")
    pid = row.get("id", row.get("unique_id", extra.get("id") or None))
    if pid is None and "index" in extra:
        pid = f"{source or 'row'}-{extra['index']}"
    return Example(id=str(pid if pid is not None else where), prompt=prompt, answer=answer.strip(),
                   solution=solution, steps=steps, where=where, system=system, data_source=source, extra_info=extra)


def check_gold_solution(ex: Example) -> None:
    """DataError naming the row unless its ``solution`` is a response in the layout the prune stage reads (thinking,
    ``</think>``, an answer with a closed ``\\boxed{}``): ``trainer.prune.source=gold`` prunes it as a CoT, and one
    without that layout would be dropped from the SFT data as wrong without a word."""
    if not ex.solution:
        raise DataError(f"{ex.where or ex.id}: no 'solution', which trainer.prune.source=gold prunes")
    thinking, closed = split_thinking(ex.solution)
    if THINK_OPEN in thinking:  # a leading one is dropped when the row is read
        raise DataError(f"{ex.where or ex.id}: 'solution' has {THINK_OPEN} inside its thinking (the prompt opens the "
                        f"thinking, so the prune stage would score the tag as part of a step)")
    if not closed or boxed_span(ex.solution, len(thinking) + len(THINK_CLOSE)) is None:
        raise DataError(f"{ex.where or ex.id}: 'solution' must be thinking, then {THINK_CLOSE}, then an answer with "
                        f"\\boxed{{...}} (trainer.prune.source=gold prunes it as a CoT); it has "
                        f"{'no answer box after the tag' if closed else f'no {THINK_CLOSE}'}")


def to_verl_row(ex: Example, data_source: str, split: str, index: int, ability: str = "math") -> dict:
    """``ex`` in verl's RL dataset schema (the question as the user message; the project's fields in ``extra_info``)."""
    messages = ([{"role": "system", "content": ex.system}] if ex.system else []) + [
        {"role": "user", "content": ex.prompt}]
    extra = {"split": split, "index": index, "id": ex.id, "solution": ex.solution or "",
             "steps": json.dumps(ex.steps) if ex.steps else ""}
    return {"data_source": data_source, "prompt": messages, "ability": ability,
            "reward_model": {"style": "rule", "ground_truth": ex.answer}, "extra_info": extra}


def generated(task: BasketConfig, n: int, seed: int, split: str) -> list[Example]:
    """``n`` embedded-task problems of ``split`` (``tasks.basket.generate``) as Examples, gold steps labelled."""
    return [Example(**{k: v for k, v in p.to_row().items()}) for p in generate(task, n, seed, split)]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Write rows atomically (temp file, then rename): a crash never leaves a half-written file."""
    atomic_write_jsonl(path, rows)


# ---- readers -------------------------------------------------------------------------------------------------------
def _json_list(text):
    try:
        return json.loads(text) if isinstance(text, str) and text.startswith("[") else []
    except json.JSONDecodeError:
        return None  # reported as bad 'steps'


def _get(row: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(row, dict):
            return None
        row = row.get(part)
    return row


def _prompt(value, where: str, key: str) -> tuple[str, str | None]:
    """(question, system message) from a string or verl's chat messages."""
    system = None
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        system = next((m.get("content") for m in value if m.get("role") == "system"), None)
        turns = [m.get("role") for m in value if m.get("role") != "system"]
        if len(turns) > 1:  # only the last user message would be asked: the rest would be dropped without a word
            raise DataError(f"{where}: '{key}' holds {len(turns)} chat turns ({', '.join(map(str, turns))}); a prompt "
                            f"is one user message, with an optional system message: put few-shot examples into the "
                            f"user message or data.prompt_template")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: '{key}' has a system message whose content is not text "
                            f"({type(system).__name__})")
        value = users[-1] if users else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string or chat messages with a user message")
    return value, system


def _json_rows(path: Path) -> list[tuple[str, object]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); a .json file holds one array of rows "
                        "(use .jsonl for one row a line)") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json file must hold a JSON array of rows, got {type(data).__name__}")
    return [(f"{path}:[{i}]", row) for i, row in enumerate(data)]


def _parquet_rows(path: Path) -> list[tuple[str, object]]:
    import datasets
    from datasets import Dataset

    datasets.disable_progress_bars()  # one small local file: no bars on the console
    try:
        ds = Dataset.from_parquet(str(path), keep_in_memory=True)
    except Exception as e:  # pyarrow's ArrowInvalid and friends: not a Parquet file
        raise DataError(f"{path}: cannot be read as Parquet ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    return [(f"{path}:row {i + 1}", row) for i, row in enumerate(ds)]


def _dataset_rows(path: Path, split: str) -> list[tuple[str, object]]:
    import datasets

    datasets.disable_progress_bars()
    configs = sorted(d.name for d in path.iterdir() if d.is_dir() and d.name not in SPLIT_FOLDERS and _holds_data(d))
    if len(configs) > 1 and not _holds_data(path, recursive=False):
        raise DataError(f"{path}: holds several datasets ({', '.join(configs)}), which the datasets library would read "
                        f"as one (each problem once per folder): point at one of them, e.g. {path / configs[0]}")
    try:
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            ds = datasets.load_from_disk(str(path), keep_in_memory=True)
        else:
            ds = datasets.load_dataset(str(path), keep_in_memory=True)
    except Exception as e:
        raise DataError(f"{path}: not a dataset directory the datasets library can read ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if isinstance(ds, datasets.DatasetDict):
        names = [split] + (["validation"] if split == "test" else [])
        name = next((n for n in names if n in ds), None)
        if name is None:
            raise DataError(f"{path}: no '{split}' split (it has {sorted(ds)})")
        ds = ds[name]
    return [(f"{path}:row {i + 1}", row) for i, row in enumerate(ds)]


SPLIT_FOLDERS = ("train", "test", "validation", "valid", "dev", "eval")  # folders the datasets library reads as splits


def _holds_data(folder: Path, recursive: bool = True) -> bool:
    """Whether ``folder`` (or, ``recursive``, a folder under it) holds data files or a saved dataset."""
    kinds = ("*.parquet", "*.jsonl", "*.json", "*.csv", "*.arrow")
    found = (p for k in kinds for p in (folder.rglob(k) if recursive else folder.glob(k)))
    return any(p.name not in ("dataset_dict.json", "dataset_info.json") for p in found) or \
        (folder / "dataset_dict.json").exists()


def prepare_hint(path: Path) -> str:
    """Where a file ``data/prepare_<name>.py`` writes (``data/<name>_<split>.*``) is missing: say how to make it
    (with ``--src``, the downloaded copy, for the scripts that convert one)."""
    name = path.name.split("_")[0]
    script = Path(__file__).resolve().parents[1] / "data" / f"prepare_{name}.py"
    if not script.exists():
        return ""
    src = " --src DOWNLOADED_COPY" if "--src" in script.read_text() else ""
    return f" (write it with: python data/prepare_{name}.py{src}; see data/README.md)"
