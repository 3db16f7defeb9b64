"""Adapter over verl's core_algos: expected values are computed by hand / numpy, not by verl."""
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from stepentropy_rl import algorithms as alg

# Two groups of 3, interleaved on purpose (verl groups by id, not by position); uneven lengths.
GROUP_IDS = np.array(["p0", "p1", "p0", "p1", "p0", "p1"], dtype=object)
REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 1.0])
LENGTHS = [4, 2, 3, 1, 4, 3]
T = 5


def _batch(rewards=REWARDS, lengths=LENGTHS):
    mask = torch.zeros(len(lengths), T)
    tlr = torch.zeros(len(lengths), T)
    for i, (r, n) in enumerate(zip(rewards, lengths)):
        mask[i, :n] = 1.0
        tlr[i, n - 1] = float(r)  # outcome reward on the last valid token
    return tlr, mask


def _expected_grpo(rewards, ids, norm, eps=1e-6):
    out = np.empty_like(rewards)
    for g in set(ids):
        sel = ids == g
        r = rewards[sel]
        centred = r - r.mean()
        out[sel] = centred / (r.std(ddof=1) + eps) if norm else centred  # unbiased std, like torch.std
    return out


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_matches_hand_formula(norm):
    tlr, mask = _batch()
    adv = alg.compute_advantages("grpo", tlr, mask, GROUP_IDS, norm_by_std=norm)
    expected = _expected_grpo(REWARDS, GROUP_IDS, norm)
    assert adv.shape == (6, T)
    for i, n in enumerate(LENGTHS):
        np.testing.assert_allclose(adv[i, :n].numpy(), expected[i], rtol=1e-5, atol=1e-6)
        assert torch.all(adv[i, n:] == 0)
    if norm:  # the population std would give a different answer: make sure we pinned the unbiased one
        g0 = REWARDS[GROUP_IDS == "p0"]
        assert not math.isclose(expected[0], (g0[0] - g0.mean()) / g0.std(ddof=0), rel_tol=1e-3)


def test_rloo_via_registry():
    tlr, mask = _batch()
    adv = alg.compute_advantages("rloo", tlr, mask, GROUP_IDS)
    for i in range(6):
        others = [REWARDS[j] for j in range(6) if j != i and GROUP_IDS[j] == GROUP_IDS[i]]
        assert adv[i, 0].item() == pytest.approx(REWARDS[i] - np.mean(others), abs=1e-6)


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_absolute_is_positive_only_and_unbaselined(beta):
    rewards = np.array([1.0, -1.0, 0.0, 2.0, -0.5, 0.25])
    tlr, mask = _batch(rewards)
    adv = alg.compute_advantages("absolute", tlr, mask, GROUP_IDS, beta=beta)
    for i, n in enumerate(LENGTHS):
        assert torch.allclose(adv[i, :n], torch.full((n,), beta * max(rewards[i], 0.0)))
        assert torch.all(adv[i, n:] == 0)
    assert torch.all(adv >= 0)


def test_absolute_callable_the_way_verl_trainer_calls_it():
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo import core_algos

    alg.register_absolute_advantage()
    tlr, mask = _batch()
    fn = core_algos.get_adv_estimator_fn("absolute")
    adv, ret = fn(token_level_rewards=tlr, response_mask=mask, index=GROUP_IDS, config=AlgoConfig())
    assert torch.equal(adv, ret)
    assert adv[0, 0].item() == pytest.approx(1.0)
    adv2, _ = fn(token_level_rewards=tlr, response_mask=mask, config=OmegaConf.create({"beta": 0.25}))
    assert adv2[0, 0].item() == pytest.approx(0.25)


def test_register_twice_and_conflicts():
    from verl.trainer.ppo import core_algos

    reg = core_algos.ADV_ESTIMATOR_REGISTRY
    alg.register_absolute_advantage()
    alg.register_absolute_advantage()
    assert reg["absolute"] is alg.compute_absolute_advantage
    assert "absolute" in alg.known_estimators() and "grpo" in alg.known_estimators()

    def stale(*a, **k):  # e.g. our function from before an importlib.reload
        raise AssertionError

    stale.__module__, stale.__qualname__ = alg.__name__, alg.compute_absolute_advantage.__qualname__
    reg["absolute"] = stale
    alg.register_absolute_advantage()
    assert reg["absolute"] is alg.compute_absolute_advantage

    def foreign(*a, **k):
        raise AssertionError

    reg["absolute"] = foreign
    try:
        with pytest.raises(ValueError, match="already registered"):
            alg.register_absolute_advantage()
    finally:
        reg["absolute"] = alg.compute_absolute_advantage


def test_unknown_estimator_names_config_key_and_known_ones():
    tlr, mask = _batch()
    with pytest.raises(ValueError, match="algorithm.adv_estimator") as err:
        alg.compute_advantages("nope", tlr, mask, GROUP_IDS)
    assert "grpo" in str(err.value) and "absolute" in str(err.value) and "rloo" in str(err.value)


def test_names_known_without_verl_are_verls():
    """Config validation checks names against ``verl_names`` without importing verl: they must be verl's own."""
    from stepentropy_rl import verl_names

    assert sorted(verl_names.ADV_ESTIMATORS) == alg.known_estimators()
    lp = torch.tensor([[-1.0, -2.0]])
    for kind in verl_names.KL_TYPES:  # verl raises on a kl_penalty it does not know
        assert torch.isfinite(alg.kl_loss(lp, lp - 0.5, torch.ones(1, 2), kind=kind))
    with pytest.raises(NotImplementedError):
        alg.kl_loss(lp, lp, torch.ones(1, 2), kind="k9")


def test_an_estimator_the_user_registers_passes_config_validation():
    from verl.trainer.ppo import core_algos

    from stepentropy_rl.verl_names import is_estimator

    assert not is_estimator("my_estimator")
    core_algos.register_adv_est("my_estimator")(lambda **kw: None)
    try:
        assert is_estimator("my_estimator")
    finally:
        del core_algos.ADV_ESTIMATOR_REGISTRY["my_estimator"]


def _logps(ratios, shape=None):
    ratio = torch.tensor(ratios, dtype=torch.float64)
    if shape is not None:
        ratio = ratio.reshape(shape)
    old = torch.full_like(ratio, -1.0)
    return old, (old + torch.log(ratio)).requires_grad_(True)


def test_policy_loss_unclipped_is_minus_a_times_ratio():
    old, new = _logps([[1.1, 0.9, 1.0]])
    adv = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    loss, metrics = alg.policy_loss(old, new, adv, mask)
    assert loss.item() == pytest.approx(-(1.1 * 1.0 - 2.0 * 0.9 + 0.5 * 1.0) / 3)
    assert metrics["pg_clipfrac"] == 0.0
    assert metrics["ppo_kl"] == pytest.approx(-(math.log(1.1) + math.log(0.9)) / 3)
    assert all(isinstance(v, float) for v in metrics.values())


def test_policy_loss_respects_clip_ratio_high_and_dual_clip():
    old, new = _logps([[1.5]])
    pos = torch.ones(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1)
    loss, metrics = alg.policy_loss(old, new, pos, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    assert loss.item() == pytest.approx(-1.28)  # not -1.5 (unclipped) nor -1.2 (symmetric clip)
    assert metrics["pg_clipfrac"] == pytest.approx(1.0)  # verl masked_mean: sum/(n+1e-8)
    loss.backward()
    assert new.grad.abs().sum().item() == 0.0  # clipped: no gradient
    sym, _ = alg.policy_loss(old, new, pos, mask, clip_ratio_low=0.2, clip_ratio_high=0.2)
    assert sym.item() == pytest.approx(-1.2)
    # negative advantage, ratio 5: -A*ratio = 5 is capped by dual clip at -A*c = 3
    old, new = _logps([[5.0]])
    loss, metrics = alg.policy_loss(old, new, -pos, mask, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(3.0)
    assert metrics["pg_clipfrac_lower"] == pytest.approx(1.0)


def test_loss_agg_modes_on_uneven_masks():
    adv = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 99.0, 99.0, 99.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    old = torch.zeros(2, 4, dtype=torch.float64)  # ratio 1 => per-token loss = -A
    losses = {m: alg.policy_loss(old, old.clone(), adv, mask, loss_agg_mode=m)[0].item() for m in alg.LOSS_AGG_MODES}
    assert losses["token-mean"] == pytest.approx(-(1 + 2 + 3 + 4 + 10) / 5)
    assert losses["seq-mean-token-mean"] == pytest.approx(-(10 / 4 + 10) / 2)
    assert losses["seq-mean-token-sum"] == pytest.approx(-(10 + 10) / 2)
    assert losses["seq-mean-token-sum-norm"] == pytest.approx(-(10 + 10) / 2 / 4)
    assert losses["token-mean"] != pytest.approx(losses["seq-mean-token-mean"])
    assert alg.aggregate(-adv, mask, "seq-mean-token-mean").item() == pytest.approx(losses["seq-mean-token-mean"])
    with pytest.raises(ValueError, match="loss_agg_mode"):
        alg.aggregate(adv, mask, "mean")


def test_unknown_policy_loss():
    old = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="loss_mode"):
        alg.policy_loss(old, old, old, torch.ones(1, 2), loss_name="nope")


def test_low_var_kl():
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, -3.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert alg.kl_loss(lp, lp.clone(), mask).item() == 0.0
    ref = lp.clone()
    ref[0, 0] -= 0.3
    ref[1, 1] += 50.0  # padding: must be ignored
    d = -0.3  # ref - lp on the one differing valid token
    expected = (math.exp(d) - d - 1) / 4
    got = alg.kl_loss(lp, ref, mask)
    assert got.item() > 0
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_entropy_loss_from_entropy_and_logits():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ent = torch.tensor([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]])
    assert alg.entropy_loss(ent, mask).item() == pytest.approx(2.0)
    assert alg.entropy_loss(ent, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 3.0) / 2)
    logits = torch.zeros(2, 3, 7)  # uniform over 7 tokens
    assert alg.entropy_loss(logits, mask).item() == pytest.approx(math.log(7), rel=1e-5)


def test_gdpo_gives_a_group_that_all_earned_the_same_no_advantage_whatever_the_lengths():
    """verl whitens GDPO's sum over tokens: its mean weighed the long responses more and was not 0, so both samples
    of a group that all answered right got -0.47 (GRPO gives them 0), and every advantage moved with the lengths."""
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    groups = np.array([0, 0, 1, 1])
    got = alg.compute_advantages("gdpo", torch.zeros(4, 4), mask, groups,
                                 components={"correctness": (1.0, torch.tensor([1.0, 1.0, 1.0, 0.0]))})
    assert torch.equal(got[:2], torch.zeros(2, 4))
    assert got[2, 0] > 0 > got[3, 0] and torch.allclose(got[2], got[2, 0] * mask[2])  # one value over each response
    longer = mask.clone()
    longer[3] = 1.0  # the wrong answer three tokens longer: the samples' advantages stay what they were
    assert torch.allclose(alg.compute_advantages("gdpo", torch.zeros(4, 4), longer, groups,
                                                 components={"correctness": (1.0, torch.tensor([1.0, 1, 1, 0]))})[:, 0],
                          got[:, 0])


def test_gdpo_normalises_each_reward_term_within_its_group_before_the_weighted_sum():
    """GDPO (verl's function, fed our per-term columns): a term with a large spread no longer drowns one with a small
    spread, unlike GRPO on the summed reward; checked against the formula by hand. The estimator used to be accepted
    with the summed reward only, and ran batch-whitened GRPO."""
    import verl.utils.torch_functional as verl_F

    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    groups = np.array([0, 0, 0, 1, 1, 1])
    correct = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    length = torch.tensor([0.9, 0.1, 0.5, 0.2, 0.8, 0.6])
    got = alg.compute_advantages("gdpo", torch.zeros(6, 3), mask, groups,
                                 components={"correct": (2.0, correct), "length": (0.5, length)})

    def norm(x):
        x = x * (mask.sum(1) > 0)  # the empty response carries no reward
        out = torch.zeros(6)
        for g in (0, 1):
            sel = torch.tensor(groups == g)
            out[sel] = (x[sel] - x[sel].mean()) / (x[sel].std() + 1e-6)
        return out

    answered = (mask.sum(1) > 0).float()
    per_sample = verl_F.masked_whiten(2.0 * norm(correct) + 0.5 * norm(length), answered)  # samples, not tokens
    want = per_sample[:, None] * mask
    assert torch.allclose(got, want, atol=1e-5)
    summed = alg.compute_advantages("grpo", (2.0 * correct + 0.5 * length)[:, None] * torch.tensor([[0, 0, 1.0]]),
                                    mask, groups)
    assert not torch.allclose(got, summed, atol=1e-3)
    with pytest.raises(ValueError, match="gdpo needs the reward's terms"):
        alg.compute_advantages("gdpo", torch.zeros(6, 3), mask, groups)
