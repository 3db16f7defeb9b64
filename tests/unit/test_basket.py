import re

import pytest

from stepentropy_rl.tasks.basket import KINDS, BasketConfig, diagnose, generate, label_step


def _moves(prompt):
    """{name: signed quantity} parsed from the prompt."""
    out = {}
    for head, sign in (("Put in", 1), ("Take out", -1)):
        m = re.search(head + r": ([^.]*)\.", prompt)
        for name, q in re.findall(r"(\w+) (\d+)", m.group(1) if m else ""):
            out[name] = sign * int(q)
    return out


def _eval(p):
    start = int(re.search(r"A basket has (\d+)", p.prompt).group(1))
    return start + sum(_moves(p.prompt).values())


def test_deterministic_and_splits_differ():
    cfg = BasketConfig()
    a, b = generate(cfg, 20, 3), generate(cfg, 20, 3)
    assert [p.to_row() for p in a] == [p.to_row() for p in b]
    assert [p.prompt for p in generate(cfg, 20, 3, "test")] != [p.prompt for p in a]
    assert [p.prompt for p in generate(cfg, 20, 4)] != [p.prompt for p in a]


def test_answers_are_right_and_format():
    for p in generate(BasketConfig(ops=("add", "sub")), 200, 0):
        assert int(p.answer) == _eval(p)
        assert p.solution.endswith(f"\n</think>\n\nThe answer is \\boxed{{{p.answer}}}.")
        assert p.solution.split("\n</think>")[0].split("\n\n") == [s.text for s in p.steps]


def test_essential_steps_carry_each_move_once_and_running_totals_follow():
    for p in generate(BasketConfig(ops=("add", "sub")), 200, 1):
        ess = [s for s in p.steps if s.label == "essential"]
        moves = _moves(p.prompt)
        assert sorted(re.match(r"Now (\w+) ", s.text).group(1) for s in ess) == sorted(moves)
        cur = int(re.search(r"A basket has (\d+)", p.prompt).group(1))
        for s in ess:
            name, q0, a, sign, q, new = re.search(r"Now (\w+) (\d+): (\d+) ([+-]) (\d+) = (\d+)\.$", s.text).groups()
            assert int(q0) == int(q) == abs(moves[name]) and (sign == "+") == (moves[name] > 0)
            assert int(a) == cur and int(new) == (cur + int(q) if sign == "+" else cur - int(q)) >= 0
            cur = int(new)


def test_redundant_steps_follow_from_what_precedes():
    seen = set()
    for p in generate(BasketConfig(style="terse", redundancy=0.6), 200, 2):
        last_ess, total = None, int(re.search(r"A basket has (\d+)", p.prompt).group(1))
        for s in p.steps:
            if s.label == "essential":
                last_ess = s.text
                total = int(s.text.rsplit("= ", 1)[1].rstrip("."))
                continue
            seen.add(s.kind)
            if s.kind == "restate":
                assert f" {total} " in s.text
            elif s.kind == "verify":
                assert s.text[len("Check: "):].split(". Correct")[0] in last_ess
            elif s.kind == "reflect":
                assert s.text == f"Wait, let me reread: {last_ess[4:].split(':')[0]}. Yes."
    assert seen == set(KINDS)


def test_redundancy_rate_and_difficulty_are_honoured():
    none = generate(BasketConfig(style="terse", redundancy=0.0), 100, 0)
    assert all(s.label == "essential" for p in none for s in p.steps)
    many = generate(BasketConfig(style="terse", redundancy=0.6), 100, 0)
    share = sum(s.label == "redundant" for p in many for s in p.steps) / sum(len(p.steps) for p in many)
    assert 0.3 < share < 0.8
    big = generate(BasketConfig(min_people=5, max_people=5, max_quantity=9), 50, 0)
    assert all(sum(s.label == "essential" for s in p.steps) == 5 for p in big)
    assert max(abs(q) for p in big for q in _moves(p.prompt).values()) == 9


@pytest.mark.parametrize("style", ["terse", "verbose"])
def test_labels_recoverable_from_text(style):
    for p in generate(BasketConfig(style=style), 100, 0):
        for s in p.steps:
            assert label_step(s.text) == (s.label, s.kind)
    assert label_step("garbage")[0] == "unknown"


@pytest.mark.parametrize("kw,key", [({"min_people": 0}, "min_people"), ({"max_quantity": 0}, "max_quantity"),
                                    ({"ops": ("mul",)}, "ops"), ({"redundancy": 1.0}, "redundancy"),
                                    ({"omit": 1.0}, "omit"), ({"stop_early": -0.1}, "stop_early")])
def test_bad_task_config(kw, key):
    with pytest.raises(ValueError, match=key):
        generate(BasketConfig(**kw), 1, 0)


def _assert_the_grammar_reads(problems):
    """Every reader of the grammar (labels, the quantity's span, diagnose) follows ``problems``' moves."""
    from stepentropy_rl.tasks.basket import listed_pairs, lookup_span, name_span

    for p in problems:
        assert [label_step(s.text) for s in p.steps] == [(s.label, s.kind) for s in p.steps]
        assert diagnose(p.solution, p.solution) is None
        moves = set()
        for s in p.steps:
            span, name = lookup_span(s.text), name_span(s.text)
            assert (span is not None) == (name is not None) == (s.label == "essential")
            if span:
                assert s.text[span[0]:span[1]] == s.text.split(":")[0].rsplit(" ", 1)[1]
                moves.add((s.text[name[0]:name[1]], s.text[span[0]:span[1]]))
        listed = {(p.prompt[a:b], p.prompt[c:d]) for (a, b), (c, d) in listed_pairs(p.prompt)}
        assert listed == moves and len(listed_pairs(p.prompt)) == len(moves)  # people are distinct
        first = next(s.text for s in p.steps if s.label == "essential")
        wrong = re.sub(r" (\d+): (\d+) \+ \d+ = \d+", lambda m: f" {int(m[1]) % 5 + 1}: {m[2]} + {int(m[1]) % 5 + 1}"
                       f" = {int(m[2]) + int(m[1]) % 5 + 1}", first)
        assert wrong != first and diagnose(p.solution, p.solution.replace(first, wrong, 1)) == "wrong quantity"


@pytest.mark.parametrize("style", ["terse", "verbose"])
def test_move_openers_word_the_moves_at_random_and_keep_the_grammar(style):
    """``move_openers=3``: each move opens with one of "Now", "Next", "Then", about equally often, and every reader of
    the grammar follows; 1 is today's text, problem for problem."""
    from stepentropy_rl.tasks.basket import MOVE_OPENERS

    problems = generate(BasketConfig(style=style, move_openers=3), 300, 0)
    moves = [s.text for p in problems for s in p.steps if s.label == "essential"]
    counts = {o: sum(m.startswith(o + " ") for m in moves) for o in MOVE_OPENERS}
    assert counts["After that"] == 0 and sum(counts.values()) == len(moves)
    assert all(abs(counts[o] / len(moves) - 1 / 3) < 0.05 for o in MOVE_OPENERS[:3])
    _assert_the_grammar_reads(problems)
    default = generate(BasketConfig(style=style), 50, 0)
    assert [p.to_row() for p in generate(BasketConfig(style=style, move_openers=1), 50, 0)] == \
        [p.to_row() for p in default]
    assert all(s.text.startswith("Now ") for p in default for s in p.steps if s.label == "essential")
    for bad in (0, len(MOVE_OPENERS) + 1):
        with pytest.raises(ValueError, match="move_openers"):
            BasketConfig(move_openers=bad)


@pytest.mark.parametrize("style", ["terse", "verbose"])
def test_move_endings_word_the_moves_end_and_keep_their_one_opener(style):
    """``move_endings=3``: each move ends with one of "", " so far", " in the basket", about equally often, opens with
    "Now" still, and every reader of the grammar follows; 1 is today's text, problem for problem."""
    from stepentropy_rl.tasks.basket import MOVE_ENDINGS

    problems = generate(BasketConfig(style=style, move_endings=3), 300, 0)
    moves = [s.text for p in problems for s in p.steps if s.label == "essential"]
    assert all(m.startswith("Now ") for m in moves)
    counts = {e: sum(re.search(rf"= \d+{e}\.$", m) is not None for m in moves) for e in MOVE_ENDINGS}
    assert sum(counts.values()) == len(moves) and all(abs(c / len(moves) - 1 / 3) < 0.05 for c in counts.values())
    _assert_the_grammar_reads(problems)
    assert [p.to_row() for p in generate(BasketConfig(style=style, move_endings=1), 50, 0)] == \
        [p.to_row() for p in generate(BasketConfig(style=style), 50, 0)]
    for bad in (0, len(MOVE_ENDINGS) + 1):
        with pytest.raises(ValueError, match="move_endings"):
            BasketConfig(move_endings=bad)


def test_recap_openers_word_the_recap_at_random_and_keep_the_grammar():
    """``recap_openers=3``: the verbose recap opens with one of "Let me make sure:", "Therefore,", "Thus,", about
    equally often, still restates the total and reads as a recap; 1 is today's text, problem for problem; the terse
    style, which has no recap, refuses it."""
    from stepentropy_rl.tasks.basket import RECAP_OPENERS

    problems = generate(BasketConfig(style="verbose", recap_openers=3), 400, 0)
    recaps = [(p, s.text) for p in problems for s in p.steps if s.kind == "recap"]
    counts = {o: sum(text.startswith(o + " after everyone, ") for _, text in recaps) for o in RECAP_OPENERS}
    assert counts["Hence,"] == 0 and sum(counts.values()) == len(recaps) > 250
    assert all(abs(counts[o] / len(recaps) - 1 / 3) < 0.06 for o in RECAP_OPENERS[:3])
    assert all(text.endswith(f"the basket has {p.answer}. Yes.") for p, text in recaps)
    _assert_the_grammar_reads(problems)
    assert all(label_step(s.text) == (s.label, s.kind) for p in problems for s in p.steps)
    default = generate(BasketConfig(style="verbose"), 50, 0)
    assert [p.to_row() for p in generate(BasketConfig(style="verbose", recap_openers=1), 50, 0)] == \
        [p.to_row() for p in default]
    assert all(s.text.startswith("Let me make sure: after everyone, ") for p in default for s in p.steps
               if s.kind == "recap")
    assert label_step("Let me make sure after everyone, the basket has 8. Yes.") == ("redundant", "recap")
    for bad in (0, len(RECAP_OPENERS) + 1):
        with pytest.raises(ValueError, match="recap_openers"):
            BasketConfig(style="verbose", recap_openers=bad)
    with pytest.raises(ValueError, match="recap_openers words the verbose style's recap"):
        BasketConfig(style="terse", recap_openers=2)


@pytest.mark.parametrize("style", ["terse", "verbose"])
def test_quantity_first_writes_some_sums_quantity_first_and_the_check_copies_the_order(style):
    """``quantity_first=0.5``: about half the put-in moves write "q + total", the move's words unchanged, each check
    right after a move copies the move's sum as written, and every reader of the grammar follows; 0 is today's text."""
    problems = generate(BasketConfig(style=style, quantity_first=0.5, redundancy=0.5), 300, 0)
    swapped = kept = 0
    for p in problems:
        cur = int(re.match(r"A basket has (\d+)", p.prompt)[1])
        for s, nxt in zip(p.steps, [*p.steps[1:], None]):
            if s.label != "essential":
                continue
            name, q, a, b, new = re.fullmatch(r"Now (\w+) (\d+): (\d+) \+ (\d+) = (\d+)\.", s.text).groups()
            assert int(new) == cur + int(q) and {int(a), int(b)} == {cur, int(q)}
            if cur != int(q):
                swapped += int(a) == int(q)
                kept += int(a) == cur
            if nxt is not None and nxt.kind == "verify":
                assert nxt.text == f"Check: {a} + {b} = {new}. Correct."
            cur = int(new)
    assert abs(swapped / (swapped + kept) - 0.5) < 0.05
    _assert_the_grammar_reads(problems)
    assert [p.to_row() for p in generate(BasketConfig(style=style, quantity_first=0.0), 50, 0)] == \
        [p.to_row() for p in generate(BasketConfig(style=style), 50, 0)]
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="quantity_first"):
            BasketConfig(quantity_first=bad)


def test_diagnose_reads_a_sum_written_quantity_first():
    """"Now Fay 3: 3 + 12 = 15." is the move "12 + 3"; its mistakes are still named."""
    from stepentropy_rl.tasks.basket import diagnose

    p = generate(BasketConfig(min_people=3, max_people=3, start_max=0), 1, 1)[0]
    ess = [s.text for s in p.steps if s.label == "essential"]
    name, q, a, new = re.match(r"Now (\w+) (\d+): (\d+) \+ \d+ = (\d+)\.", ess[1]).groups()
    assert a != q  # the swap is visible

    def with_second(step_text):
        return p.solution.replace(ess[1], step_text)

    assert diagnose(p.solution, with_second(f"Now {name} {q}: {q} + {a} = {new}.")) is None
    assert diagnose(p.solution, with_second(f"Now {name} {q}: {q} + {a} = {int(new) + 1}.")) == "wrong arithmetic"
    assert diagnose(p.solution, with_second(f"Now {name} {q}: {q} + {int(a) + 1} = {int(new) + 1}.")) == "wrong carry"


def test_diagnose_reads_a_sum_as_written_unless_quantity_first_has_fewer_wrong_numbers():
    """Fay 3 on a start of 3: "3 + 5 = 8" was read quantity first and named a wrong carry (5); as written it has
    one wrong number too, the quantity, and the written order wins the tie."""
    from stepentropy_rl.tasks.basket import diagnose

    gold = "Now Fay 3: 3 + 3 = 6.\n\nNow Lea 2: 6 + 2 = 8.\n</think>\n\nThe answer is \\boxed{8}."
    assert diagnose(gold, gold) is None
    assert diagnose(gold, gold.replace("3 + 3 = 6", "3 + 5 = 8")) == "wrong quantity"
    assert diagnose(gold, gold.replace("Lea 2: 6 + 2", "Lea 2: 2 + 6")) is None  # quantity first, all right


def test_diagnose_reads_the_answer_the_grader_reads():
    """The answer line was checked by substring: a later box the grader reads as the answer passed, and a bare box
    the grader accepts was a wrong answer line (so a CoT right at every step counted as right by luck)."""
    from stepentropy_rl.tasks.basket import diagnose
    from stepentropy_rl.tasks.grading import exact_match

    gold = "Now Fay 3: 3 + 3 = 6.\n\nNow Lea 2: 6 + 2 = 8.\n</think>\n\nThe answer is \\boxed{8}."
    two = gold.replace("\\boxed{8}.", "\\boxed{8}. So \\boxed{9}.")
    assert not exact_match(two.split("</think>")[1], "8") and diagnose(gold, two) == "wrong answer line"
    for bare in ("\\boxed{8}", "The answer is \\boxed{8}"):
        right = gold.split("</think>")[0] + "</think>\n\n" + bare
        assert exact_match(right.split("</think>")[1], "8") and diagnose(gold, right) is None


def test_diagnose_names_the_first_mistake():
    from stepentropy_rl.tasks.basket import diagnose

    p = generate(BasketConfig(min_people=3, max_people=3, redundancy=0.5), 1, 5)[0]
    assert diagnose(p.solution, p.solution) is None
    ess = [s.text for s in p.steps if s.label == "essential"]
    name, q, a, sign, q2, new = re.match(r"Now (\w+) (\d+): (\d+) ([+-]) (\d+) = (\d+)\.", ess[1]).groups()

    def with_second(step_text):
        return p.solution.replace(ess[1], step_text)

    first_name = re.match(r"Now (\w+) ", ess[0]).group(1)
    assert diagnose(p.solution, with_second(ess[1].replace(f"Now {name} ", f"Now {first_name} "))) == "repeated person"
    assert diagnose(p.solution, with_second(ess[1].replace(f"Now {name} ", "Now Zed "))) == "unknown person"
    wrong_q = int(q) % 5 + 1
    assert diagnose(p.solution, with_second(f"Now {name} {wrong_q}: {a} {sign} {wrong_q} = {int(a) + wrong_q}.")) == "wrong quantity"
    assert diagnose(p.solution, with_second(f"Now {name} {q}: {int(a) + 1} {sign} {q} = {int(new) + 1}.")) == "wrong carry"
    assert diagnose(p.solution, with_second(f"Now {name} {q}: {a} {sign} {q} = {int(new) + 1}.")) == "wrong arithmetic"
    assert diagnose(p.solution, with_second("Now it is")) == "unparsed step"
    assert diagnose(p.solution, p.solution.replace(ess[2], "So the basket has 1 coins now.")) == "missed person"
    # the count is named before the steps: a CoT one move short or one too long, its second move's quantity wrong
    wrong_second = with_second(f"Now {name} {wrong_q}: {a} {sign} {wrong_q} = {int(a) + wrong_q}.")
    assert diagnose(p.solution, wrong_second.replace(ess[2], "So the basket has 1 coins now.")) == "missed person"
    assert diagnose(p.solution, wrong_second.replace(ess[2], f"{ess[2]}\n\n{ess[2]}")) == "extra move"
    assert diagnose(p.solution, p.solution.replace(ess[2], f"{ess[2]}\n\n{ess[2]}")) == "extra move"
    assert diagnose(p.solution, p.solution.replace(f"boxed{{{p.answer}}}", f"boxed{{{int(p.answer) + 1}}}")) == "wrong answer line"


def test_verbose_style_is_r1_like_and_labelled():
    """style=verbose: the start restated, every move reread, checked and restated, sometimes re-checked, the
    total confirmed, each routine step left out now and then, and now and then the thinking stops right after the last
    move (so </think> can follow any step); every redundant step copies numbers from what precedes
    it; labels come back from the text, the gold CoT passes diagnose, and most of the thinking is redundant (by
    characters here; the eval measures tokens)."""
    terse = generate(BasketConfig(style="terse"), 1, 0, "test")[0]
    cfg = BasketConfig(style="verbose", redundancy=0.5, stop_early=0.1)
    verbose = generate(cfg, 1, 0, "test")[0]
    moves = lambda p: [s.text for s in p.steps if s.label == "essential"]  # noqa: E731
    assert (verbose.prompt, verbose.answer, moves(verbose)) == (terse.prompt, terse.answer, moves(terse))
    share, kinds, early = [], [], 0
    for p in generate(cfg, 200, 1, "test"):
        total = int(re.search(r"A basket has (\d+)", p.prompt).group(1))
        after = []  # kinds since the last move
        for i, s in enumerate(p.steps):
            kinds.append(s.kind)
            if s.kind == "problem":
                assert i == 0 and s.text == f"The basket starts with {total}."
            elif s.kind == "move":
                name, a, sign, q, new = re.search(r"Now (\w+) \d+: (\d+) ([+-]) (\d+) = (\d+)\.$", s.text).groups()
                assert int(a) == total
                total, after = int(new), []
            elif s.kind == "reread":
                assert after == [] and s.text == f"Reading it again: {name} {q}. Yes."
            elif s.kind == "verify":
                assert set(after) <= {"reread"} and s.text == f"Check: {a} {sign} {q} = {new}. Correct."
            elif s.kind == "restate":
                assert set(after) <= {"reread", "verify"} and s.text == f"So the basket has {total} now."
            elif s.kind == "reflect":
                undo = "-" if sign == "+" else "+"
                assert s.text == f"Wait, let me check that again: {new} {undo} {q} = {a}. Yes."
            else:
                assert s.kind == "recap" and i == len(p.steps) - 1
                assert s.text == f"Let me make sure: after everyone, the basket has {total}. Yes."
            if s.kind != "move":
                after.append(s.kind)
        assert p.answer == str(total)
        early += p.steps[-1].kind == "move"
        assert all(label_step(s.text) == (s.label, s.kind) for s in p.steps)
        assert diagnose(p.solution, p.solution) is None
        share.append(sum(len(s.text) for s in p.steps if s.label == "redundant") / sum(len(s.text) for s in p.steps))
    n_moves = kinds.count("move")
    for kind, per in (("reread", n_moves), ("verify", n_moves), ("restate", n_moves), ("problem", 200)):
        assert 0.75 < kinds.count(kind) / per < 0.95, kind  # left out with probability omit = 0.15 (the default)
    assert 0.35 < kinds.count("reflect") / n_moves < 0.65
    assert 0.65 < kinds.count("recap") / 200 < 0.87  # kept with probability (1 - stop_early)(1 - omit)
    assert 8 < early < 40  # the thinking ends at the last move with probability stop_early
    assert sum(share) / len(share) > 0.75
    with pytest.raises(ValueError, match="style"):
        BasketConfig(style="chatty")


@pytest.mark.parametrize("joint", ["[SKIP]\n", "[SKIP] ", "[SKIP]\n[SKIP]\n"])
def test_diagnose_reads_a_move_joined_to_a_skip_by_less_than_a_blank_line(joint):
    """A GRPO model wrote "[SKIP]\\nNow Hal 3: 12 + 3 = 15." (one newline): the move is written and checked, not a
    missed person (an explore-only final model was right at every step in 251 CoTs counted so)."""
    from stepentropy_rl.tasks.basket import diagnose

    p = generate(BasketConfig(min_people=3, max_people=3), 1, 5)[0]
    ess = [s.text for s in p.steps if s.label == "essential"]
    thinking = "\n\n".join(f"[SKIP]\n\n{m}" for m in ess[:-1]) + f"\n\n{joint}{ess[-1]}\n\n[SKIP]\n"
    answer = p.solution.partition("</think>")[2]
    assert diagnose(p.solution, f"{thinking}</think>{answer}") is None
    name, q = re.match(r"Now (\w+) (\d+):", ess[-1]).groups()
    wrong = re.sub(rf"Now {name} {q}:", f"Now {name} {int(q) % 5 + 1}:", ess[-1])
    assert diagnose(p.solution, f"{thinking.replace(ess[-1], wrong)}</think>{answer}") == "wrong quantity"


def test_diagnose_reads_a_move_with_a_runaway_number_as_unparsed():
    """A model that writes a quantity of thousands of digits made int() raise (Python's 4300-digit limit) and the
    evaluation stop; such a move is unparsed."""
    p = generate(BasketConfig(), 1, seed=0)[0]
    thinking, _, answer = p.solution.partition("</think>")
    name = re.search(r"Now (\w+) \d+:", thinking)[1]
    broken = re.sub(rf"Now {name} \d+: (\d+) \+ (\d+) = \d+\.", rf"Now {name} 3: \1 + \2 = {'9' * 5000}.", thinking,
                    count=1)
    assert broken != thinking and diagnose(p.solution, broken + "</think>" + answer) == "unparsed step"


def test_labelled_steps_on_other_problems_are_not_diagnosed():
    """A user's file may label its steps; diagnose reads the task's moves only (it raised IndexError)."""
    from stepentropy_rl.data import Example, generated
    from stepentropy_rl.driver.evaluate import labelled

    ours = generated(BasketConfig(), 2, 0, "test")
    theirs = Example(id="x", prompt="1+1?", answer="2", solution="1+1 = 2\n</think>\n\n\\boxed{2}",
                     steps=[{"text": "1+1 = 2", "label": "essential"}])
    assert labelled(ours) and not labelled(ours + [theirs])
