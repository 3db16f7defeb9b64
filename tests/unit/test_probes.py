import pytest
import torch

from stepentropy_rl.probes import back_attention, chance_name_shares, last_name_share, name_shares
from stepentropy_rl.tasks.basket import BasketConfig, generate, name_span, step_spans

VERBOSE = BasketConfig(style="verbose")


def _forced(problems, hit_move):
    """Teacher-forced records with one token per character: the model "predicts" the first letter of the name of
    each move that ``hit_move(i)`` picks, and nothing else."""
    out = []
    for p in problems:
        hit = [False] * len(p.solution)
        moves = [start + span[0] for start, _, s in step_spans(p)
                 if s.label == "essential" and (span := name_span(s.text))]
        for i, at in enumerate(moves):
            hit[at] = hit_move(i)
        out.append((p, [(k, k + 1) for k in range(len(p.solution))], hit))
    return out


def test_name_shares_count_each_moves_person_by_its_place():
    problems = generate(VERBOSE, 20, 0, "test")
    assert name_shares(_forced(problems, lambda i: i == 0)) == [1.0, 0.0, 0.0, 0.0]
    assert name_shares(_forced(problems, lambda i: i % 2 == 1)) == [0.0, 1.0, 0.0, 1.0]


def test_the_last_person_left_is_read_at_each_problems_last_move():
    """With two or three people the last place of ``name_shares`` holds only the three-person problems; a two-person
    problem's last move (its person forced as well) sat in the second place, unread by the bootstrap's warning."""
    problems = generate(BasketConfig(style="verbose", min_people=2, max_people=3), 40, 0, "test")
    sizes = [len([s for s in p.steps if s.label == "essential"]) for p in problems]
    assert set(sizes) == {2, 3}
    last = {id(p): n for p, n in zip(problems, sizes)}
    forced = _forced(problems, lambda i: False)
    for p, offsets, hit in forced:  # the model names only each problem's last person
        moves = [start + span[0] for start, _, s in step_spans(p)
                 if s.label == "essential" and (span := name_span(s.text))]
        hit[moves[last[id(p)] - 1]] = True
    assert last_name_share(forced) == 1.0
    assert name_shares(forced)[-1] == 1.0 and name_shares(forced)[1] < 1.0  # the place view mixes them
    two_only = [(p, o, [False] * len(h)) if last[id(p)] == 2 else (p, o, h) for p, o, h in forced]
    assert last_name_share(two_only) == pytest.approx(sizes.count(3) / len(sizes))
    assert last_name_share([]) is None


def test_chance_is_one_over_the_people_left():
    three = generate(BasketConfig(style="verbose", min_people=3, max_people=3), 10, 0, "test")
    assert chance_name_shares(three) == pytest.approx([1 / 3, 1 / 2, 1.0])
    mixed = generate(VERBOSE, 200, 0, "test")  # 3 or 4 people
    first, *_, last = chance_name_shares(mixed)
    assert 1 / 4 < first < 1 / 3 and last == 1.0 and len(chance_name_shares(mixed)) == 4


def test_back_attention_reads_the_quantitys_look_at_its_person():
    att = [torch.full((1, 2, 5, 5), 0.1) for _ in range(2)]
    att[1][0, 0] = torch.diag(torch.ones(4), -1)  # layer 1, head 0: each token looks at the one before
    out = back_attention(att, [(1, 2), (3, 4)])
    assert out.shape == (2, 2) and out[1, 0] == 1.0
    assert torch.allclose(out[0], torch.tensor(0.1)) and out[1, 1] == pytest.approx(0.1)
