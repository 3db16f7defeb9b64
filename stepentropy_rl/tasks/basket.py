"""The embedded task: basket word problems with step-labelled reasoning, terse or R1-like verbose.

A problem: a basket starts with some items; people put items in or take them out; how many are in it at the end?
"A basket has 3 coins. Put in: Fay 3, Lea 2, Eve 1. How many coins are in the basket at the end?"
Each quantity follows its person's name directly, so that the lookup is one-hop copying (which none of the 30
verbose tiny reasoners measured has learned: README, "The default recipe").
The reasoning handles one person per *essential* step ("Now Fay 3: 3 + 3 = 6."), in an order the writer chooses (a
real choice: which quantity to work on next), so each essential step carries information the answer needs.

``style="verbose"`` writes R1-like reasoning: most of the thinking restates and re-checks what came
before, and all of it is fixed by the context, so its entropy measures redundancy and not the model's uncertainty:

- ``problem``  "The basket starts with 3."                                (first: the start restated)
- after every move a ``reread`` ("Reading it again: Fay 3. Yes."), a ``verify`` ("Check: 3 + 3 = 6. Correct.") and a
  ``restate`` ("So the basket has 6 now."), then with probability ``redundancy`` a ``reflect`` ("Wait, let me check
  that again: 6 - 3 = 3. Yes.");
- ``recap``    "Let me make sure: after everyone, the basket has 8. Yes."   (last: the total confirmed; its opener drawn
  from ``RECAP_OPENERS`` with ``recap_openers`` > 1: "Therefore, after everyone, ...")

Each routine step (problem, reread, verify, restate, recap) is left out with probability ``omit``, and with
probability ``stop_early`` the thinking stops right after the last move, so that ``</think>`` can follow any step (without
it the model kept reasoning after ``</think>`` whenever pruning removed the last checks). About 80% of the steps and
of the thinking tokens are redundant, so pruning 80% of the steps keeps every essential one in most CoTs.

Each redundant step copies numbers from the step just before it. Steps that copied a name or the item word from far
back, or the list of people, stayed uncertain after the bootstrap (the model had not learned those copies), so their
entropy would have measured the model's failure to copy rather than redundancy.

``style="terse"`` (``data=basket``; the default config is ``data=basket_verbose``) writes one step per person, and
between them the writer may insert *redundant* steps:

- ``restate``  "So the basket has 8 apples now."             (restates the running result)
- ``verify``   "Check: 5 + 3 = 8. Correct."                   (re-verifies the last step)
- ``announce`` "Let me take the next person."                 (announces the next step)
- ``reflect``  "Wait, let me reread: Ann 3. Yes."            (a "wait, let me check" reflection)

Whether a redundant step comes is a fork: at each gap one is inserted with probability ``redundancy``, repeatedly
(geometric runs), so the choice never becomes certain.

``move_openers`` (both styles; 1 by default) words each move's opener at random from the first ones of ``MOVE_OPENERS``
("Next Fay 3: ..."), as a writer words a new step freely while a restatement copies: the last move, whose person and
quantity are forced by the ones before, then still carries the choice of wording, where otherwise its entropy falls
below the rereads' and low-entropy pruning cuts it first (README, the static study). ``move_endings`` does the same at
the move's end ("Now Fay 3: 3 + 3 = 6 so far."), from ``MOVE_ENDINGS``, keeping the one opener. Either knob cost the
tiny reasoner its count of the moves on some seeds (README). ``quantity_first`` leaves the move's words alone and gives
it a choice of notation instead: with that chance a put-in move writes its sum quantity first ("Now Fay 3: 3 + 12 =
15."), and the check after it copies the order it chose. ``recap_openers`` (verbose; 1 here, 2 in
``data=basket_verbose``, the default task) opens the recap with one of the first ones of ``RECAP_OPENERS`` ("Therefore,
after everyone, ..."), as R1 opens its conclusion with a connector of its choosing (paper 2 finds those connectors among
R1's highest-entropy tokens): the recap restates the total, and with one fixed opener it is the lowest-entropy step of
the CoT, so pruning the high-entropy steps keeps the answer (README, the static study).

Everything is generated deterministically from a seed.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from stepentropy_rl.cot_format import boxed_answer

NAMES = ("Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ida", "Jon", "Kim", "Lea", "Max", "Ned", "Oli", "Pam")
ITEMS = ("apples", "pears", "coins", "books", "shells", "stamps", "eggs", "cards")
KINDS = ("restate", "verify", "announce", "reflect")
VERBOSE_KINDS = ("problem", "reread", "verify", "restate", "reflect", "recap")
OPS = ("add", "sub")
STYLES = ("terse", "verbose")
MOVE_OPENERS = ("Now", "Next", "Then", "After that")
MOVE_ENDINGS = ("", " so far", " in the basket")
RECAP_OPENERS = ("Let me make sure:", "Therefore,", "Thus,", "Hence,")


@dataclass
class BasketConfig:
    """Difficulty of the embedded task."""

    min_people: int = 3
    max_people: int = 4
    max_quantity: int = 5  # each person moves 1..max_quantity items
    start_max: int = 5  # the basket starts with 0..start_max items
    ops: tuple = ("add",)  # "add" (puts in) and/or "sub" (takes out)
    redundancy: float = 0.4  # terse: chance of each redundant step; verbose: of a re-check after each move
    max_redundant_run: int = 3  # hard cap on consecutive redundant steps
    omit: float = 0.15  # verbose: chance that each routine step (start, check, restate, final check) is left out
    stop_early: float = 0.05  # verbose: chance that the thinking stops right after the last move
    style: str = "terse"  # terse: optional redundant steps; verbose: R1-like re-checking (see the module docstring)
    move_openers: int = 1  # each move's opener drawn from the first this many MOVE_OPENERS; 1: always "Now"
    move_endings: int = 1  # each move's ending drawn from the first this many MOVE_ENDINGS; 1: none
    quantity_first: float = 0.0  # chance that a put-in move writes its sum quantity first ("3 + 12 = 15")
    recap_openers: int = 1  # verbose: the recap's opener drawn from the first this many RECAP_OPENERS; 1: always
    # "Let me make sure:"

    def __post_init__(self):
        self.ops = tuple(self.ops)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ValueError(f"{key} {msg}")

        need(1 <= self.min_people <= self.max_people <= len(NAMES), "min_people/max_people",
             f"must satisfy 1 <= min_people <= max_people <= {len(NAMES)}, got {self.min_people}, {self.max_people}")
        need(self.max_quantity >= 1, "max_quantity", f"must be >= 1, got {self.max_quantity}")
        need(self.start_max >= 0, "start_max", f"must be >= 0, got {self.start_max}")
        need(len(self.ops) > 0 and set(self.ops) <= set(OPS), "ops", f"must be a non-empty subset of {OPS}, got {self.ops}")
        need(0.0 <= self.redundancy < 1.0, "redundancy", f"must be in [0, 1), got {self.redundancy}")
        need(self.max_redundant_run >= 0, "max_redundant_run", f"must be >= 0, got {self.max_redundant_run}")
        need(0.0 <= self.omit < 1.0, "omit", f"must be in [0, 1), got {self.omit}")
        need(0.0 <= self.stop_early < 1.0, "stop_early", f"must be in [0, 1), got {self.stop_early}")
        need(self.style in STYLES, "style", f"must be one of {STYLES}, got {self.style!r}")
        need(1 <= self.move_openers <= len(MOVE_OPENERS), "move_openers",
             f"must be in [1, {len(MOVE_OPENERS)}], got {self.move_openers}")
        need(1 <= self.move_endings <= len(MOVE_ENDINGS), "move_endings",
             f"must be in [1, {len(MOVE_ENDINGS)}], got {self.move_endings}")
        need(0.0 <= self.quantity_first < 1.0, "quantity_first", f"must be in [0, 1), got {self.quantity_first}")
        need(1 <= self.recap_openers <= len(RECAP_OPENERS), "recap_openers",
             f"must be in [1, {len(RECAP_OPENERS)}], got {self.recap_openers}")
        need(self.recap_openers == 1 or self.style == "verbose", "recap_openers",
             f"words the verbose style's recap; the terse style has none (got {self.recap_openers} with style terse)")


@dataclass
class Step:
    text: str
    label: str  # "essential" | "redundant"
    kind: str  # "move" for essential steps, else one of KINDS


@dataclass
class Problem:
    id: str
    prompt: str
    answer: str
    steps: list = field(default_factory=list)

    @property
    def thinking(self) -> str:
        return "\n\n".join(s.text for s in self.steps)

    @property
    def solution(self) -> str:
        """The assistant's full response after the ``<think>\\n`` generation prompt."""
        return format_response(self.thinking, self.answer_line)

    @property
    def answer_line(self) -> str:
        return answer_sentence(self.answer)

    def to_row(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "answer": self.answer, "solution": self.solution,
                "steps": [{"text": s.text, "label": s.label, "kind": s.kind} for s in self.steps]}


def answer_sentence(answer: str) -> str:
    return f"The answer is \\boxed{{{answer}}}."


def format_response(thinking: str, answer_line: str) -> str:
    """Response layout shared by data, pruning and evaluation: thinking, ``\\n</think>\\n\\n``, the answer."""
    return f"{thinking}\n</think>\n\n{answer_line}"


def _sign(op: str) -> str:
    return "+" if op == "add" else "-"


def generate_problem(rng: random.Random, cfg: BasketConfig, pid: str) -> Problem:
    n = rng.randint(cfg.min_people, cfg.max_people)
    names = rng.sample(NAMES, n)
    item = rng.choice(ITEMS)
    ops = [rng.choice(cfg.ops) for _ in names]
    qty = [rng.randint(1, cfg.max_quantity) for _ in names]
    start = rng.randint(0, cfg.start_max)
    # Takes are bounded so that the count never drops below zero in any order of work.
    start += sum(q for q, op in zip(qty, ops) if op == "sub")
    moves = list(zip(names, ops, qty))
    given = _moves_text(moves)
    prompt = f"A basket has {start} {item}. {given} How many {item} are in the basket at the end?"

    order = rng.sample(range(n), n)  # the writer's choice of which person to handle next
    if cfg.style == "verbose":
        return Problem(id=pid, prompt=prompt, answer=str(_final(start, moves)),
                       steps=_verbose_steps(rng, cfg, start, moves, order))
    steps: list[Step] = []
    cur, last = start, None

    def redundant(position: str) -> None:
        allowed = ["announce"] if position == "first" else (
            ["restate", "verify", "reflect"] if position == "last" else list(KINDS))
        run = 0
        while run < cfg.max_redundant_run and rng.random() < cfg.redundancy:
            kind = rng.choice(allowed)
            steps.append(Step(_redundant_text(kind, position, cur, last, item), "redundant", kind))
            run += 1

    redundant("first")
    for j, idx in enumerate(order):
        name, op, q = moves[idx]
        new = cur + q if op == "add" else cur - q
        sign = _sign(op)
        sums = _sum(rng, cfg, cur, sign, q)
        steps.append(_move(rng, cfg, f"{name} {q}: {sums} = {new}"))
        last = (name, q, sums, new)
        cur = new
        redundant("last" if j == n - 1 else "middle")
    return Problem(id=pid, prompt=prompt, answer=str(cur), steps=steps)


def _move(rng: random.Random, cfg: BasketConfig, rest: str) -> Step:
    """A move step, its opener drawn from the first ``cfg.move_openers`` of ``MOVE_OPENERS`` and its ending from the
    first ``cfg.move_endings`` of ``MOVE_ENDINGS`` (no draw for one)."""
    opener = MOVE_OPENERS[rng.randrange(cfg.move_openers)] if cfg.move_openers > 1 else MOVE_OPENERS[0]
    ending = MOVE_ENDINGS[rng.randrange(cfg.move_endings)] if cfg.move_endings > 1 else MOVE_ENDINGS[0]
    return Step(f"{opener} {rest}{ending}.", "essential", "move")


def _sum(rng: random.Random, cfg: BasketConfig, cur: int, sign: str, q: int) -> str:
    """A move's sum as written: "12 + 3", or "3 + 12" with chance ``cfg.quantity_first`` for a put-in (no draw at 0)."""
    if sign == "+" and cfg.quantity_first > 0 and rng.random() < cfg.quantity_first:
        return f"{q} + {cur}"
    return f"{cur} {sign} {q}"


def _moves_text(moves) -> str:
    """"Put in: Fay 3, Lea 2. Take out: Eve 1." -- each quantity right after its person's name."""
    lines = []
    for op, head in (("add", "Put in"), ("sub", "Take out")):
        group = [f"{name} {q}" for name, o, q in moves if o == op]
        if group:
            lines.append(f"{head}: " + ", ".join(group) + ".")
    return " ".join(lines)


def _final(start: int, moves) -> int:
    return start + sum(q if op == "add" else -q for _, op, q in moves)


def _verbose_steps(rng: random.Random, cfg: BasketConfig, start: int, moves, order) -> list[Step]:
    """R1-like: the start restated, every move reread, checked and its result restated (and sometimes re-checked), the total
    confirmed at the end; the essential moves are the same as in the terse style. Each redundant step copies numbers
    from the step before it: a copy at a short distance, which the tiny model learns (see the module docstring).
    Each routine step is left out with probability ``omit``, so the model reads what is there rather than counting
    positions: with every step always present, it answered by position and failed on any pruned CoT."""
    def routine(text: str, kind: str) -> list[Step]:
        return [] if rng.random() < cfg.omit else [Step(text, "redundant", kind)]

    steps = routine(f"The basket starts with {start}.", "problem")
    cur = start
    for idx in order:
        name, op, q = moves[idx]
        sign, new = _sign(op), cur + q if op == "add" else cur - q
        sums = _sum(rng, cfg, cur, sign, q)
        steps.append(_move(rng, cfg, f"{name} {q}: {sums} = {new}"))
        steps += routine(f"Reading it again: {name} {q}. Yes.", "reread")
        steps += routine(f"Check: {sums} = {new}. Correct.", "verify")
        steps += routine(f"So the basket has {new} now.", "restate")
        if rng.random() < cfg.redundancy:
            steps.append(Step(f"Wait, let me check that again: {new} {'-' if op == 'add' else '+'} {q} = {cur}. Yes.",
                              "redundant", "reflect"))
        cur = new
    if rng.random() < cfg.stop_early:  # now and then the thinking stops right after the last move
        return steps[:max(i for i, s in enumerate(steps) if s.label == "essential") + 1]
    opener = RECAP_OPENERS[rng.randrange(cfg.recap_openers)] if cfg.recap_openers > 1 else RECAP_OPENERS[0]
    return steps + routine(f"{opener} after everyone, the basket has {cur}. Yes.", "recap")


def _redundant_text(kind: str, position: str, cur: int, last, item: str) -> str:
    if kind == "announce":
        return "Let me go through the people one at a time." if position == "first" else "Let me take the next person."
    name, q, sums, new = last
    if kind == "restate":
        return f"So the basket has {cur} {item} now."
    if kind == "verify":
        return f"Check: {sums} = {new}. Correct."
    return f"Wait, let me reread: {name} {q}. Yes."


def generate(cfg: BasketConfig, n: int, seed: int, split: str = "train") -> list[Problem]:
    """``n`` problems, deterministic in (cfg, seed, split); splits use disjoint random streams."""
    cfg.validate()
    rng = random.Random(f"{seed}/{split}")
    return [generate_problem(rng, cfg, f"{split}-{i}") for i in range(n)]


_PATTERNS = (*((f"{o} ", "essential", "move") for o in MOVE_OPENERS), ("So the basket has ", "redundant", "restate"),
             ("Check: ", "redundant", "verify"), ("Reading it again: ", "redundant", "reread"), ("The basket starts with ", "redundant", "problem"),
             *((o.rstrip(":"), "redundant", "recap") for o in RECAP_OPENERS), ("Let me ", "redundant", "announce"),
             ("Wait, let me reread", "redundant", "reflect"),
             ("Wait, let me check that again", "redundant", "reflect"))


def label_step(text: str) -> tuple[str, str]:
    """Label a step of this task's grammar, e.g. one the model wrote: (label, kind), ("unknown", "") otherwise. A
    leading placeholder is dropped, as ``diagnose`` drops it: a trained model may join a ``[SKIP]`` to the next step
    with one newline or a space, and that step is still written.

    >>> label_step("[SKIP]\\nNow Hal 3: 12 + 3 = 15."), label_step("[SKIP] So the basket has 15 now.")
    (('essential', 'move'), ('redundant', 'restate'))
    >>> label_step("[SKIP]")
    ('unknown', '')
    """
    text = _PLACEHOLDERS.sub("", text.strip())
    for prefix, label, kind in _PATTERNS:
        if text.startswith(prefix):
            return label, kind
    return "unknown", ""


_LISTED = re.compile(rf"\b({'|'.join(NAMES)}) (\d{{1,9}})\b")
_MOVE = re.compile(rf"(?:{'|'.join(MOVE_OPENERS)}) (\w+) (\d{{1,9}}): (\d{{1,9}}) ([+-]) (\d{{1,9}}) = (\d{{1,9}})"
                   rf"(?:{'|'.join(MOVE_ENDINGS)})\.")


def has_moves(solution: str) -> bool:
    """Whether ``solution`` is written in the task's grammar (it has a move): what ``diagnose`` can read."""
    return _MOVE.search(solution) is not None


def lookup_span(step_text: str) -> tuple[int, int] | None:
    """Where a move step writes the quantity it looks up by its person's name ("Now Fay 3: ..." -> the "3"), as a
    character span; None for any other step. The total comes out right whichever person a quantity is bound to, so
    the answer alone never teaches this lookup."""
    m = _MOVE.match(step_text)
    return m.span(2) if m else None


def step_spans(problem):
    """(start, end, step) for each of ``problem``'s steps: its character span in the solution."""
    pos = 0
    for step in problem.steps:  # the thinking opens the solution, its steps in order
        start = problem.solution.index(step.text, pos)
        pos = start + len(step.text)
        yield start, pos, step


def name_span(step_text: str) -> tuple[int, int] | None:
    """Where a move step names its person ("Now Fay 3: ..." -> "Fay"), as a character span; None for any other step."""
    m = _MOVE.match(step_text)
    return m.span(1) if m else None


def listed_pairs(prompt: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Each person's name and quantity in ``prompt`` ("Put in: Fay 3, ..."), as two character spans."""
    return [(m.span(1), m.span(2)) for m in _LISTED.finditer(prompt)]


_PLACEHOLDERS = re.compile(r"^(?:\[\w+\]\s*)+")  # "[SKIP] " (or any bracketed placeholder) opening a line
MISTAKES = ("missed person", "extra move", "unparsed step", "unknown person", "repeated person", "wrong quantity",
            "wrong carry", "wrong arithmetic", "wrong answer line")


def diagnose(solution: str, response: str) -> str | None:
    """The first mistake of ``response`` against the gold ``solution`` (one of ``MISTAKES``), or None if all is right.

    First the count: fewer moves than people is "missed person", more is "extra move" (a CoT that stops early or goes
    one too far is named so, whatever its steps hold). Then the essential steps against the gold moves in order:
    person, quantity, carried total, arithmetic; then that the last box after ``</think>`` holds the last total (what
    the task's exact grader reads with ``data.grade_span=answer``, its defaults). Steps are read line by line, a
    leading placeholder dropped: a trained model may join a ``[SKIP]`` to the next move with one newline or a space
    ("[SKIP]\\nNow Hal 3: 12 + 3 = 15."), and that move is still written. A sum whose first number is the person's quantity is read quantity first ("Now Fay 3: 3 + 12 = 15."
    is 12 + 3) where that reading has fewer wrong numbers than the written order; at a tie, as written.
    """
    moves = list(_MOVE.finditer(solution))
    gold = {m[1]: (m[4], int(m[2])) for m in moves}
    first = moves[0]
    cur, seen = int(first[6]) - int(first[2]) * (1 if first[4] == "+" else -1), set()  # the start, either order
    thinking, _, answer = response.partition("</think>")
    lines = (_PLACEHOLDERS.sub("", line.strip()) for line in thinking.splitlines())
    written = [s for s in lines if label_step(s)[1] == "move"]
    if len(written) != len(gold):
        return "missed person" if len(written) < len(gold) else "extra move"
    for step in written:
        m = _MOVE.match(step)
        if m is None:
            return "unparsed step"
        name, q0, a, sign, q, new = m[1], int(m[2]), int(m[3]), m[4], int(m[5]), int(m[6])
        if name not in gold:
            return "unknown person"
        wrong = (lambda carry, qty: (carry != cur) + ((sign, qty) != gold[name]))
        if sign == "+" and a == q0 != q and wrong(q, a) < wrong(a, q):  # quantity first ("3 + 12"): "12 + 3"
            a, q = q, a
        if name in seen:
            return "repeated person"
        if (sign, q0) != gold[name] or q != q0:
            return "wrong quantity"
        if a != cur:
            return "wrong carry"
        if new != (a + q if sign == "+" else a - q):
            return "wrong arithmetic"
        seen.add(name)
        cur = new
    if boxed_answer(answer) != str(cur):
        return "wrong answer line"
    return None
