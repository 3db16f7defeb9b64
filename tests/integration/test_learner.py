"""FSDP2 learners (2 ranks, gloo) in a placement group: exact log-probs, SFT steps, full-state export, checkpoints."""
import pytest
import torch

from stepentropy_rl.batch import Batch
from stepentropy_rl.config import LearnerCluster, OptimConfig
from stepentropy_rl.driver.roles import spawn_learners
from stepentropy_rl.tasks.basket import BasketConfig, generate
from stepentropy_rl.tokenizer import EOS, prompt_text

pytestmark = pytest.mark.engine
OPTIM = OptimConfig(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0, grad_clip=1.0)
GRPO_LOSS = {"kind": "grpo", "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0,
             "loss_agg_mode": "token-mean", "kl_coef": 0.0, "kl_type": "low_var_kl"}


@pytest.fixture(scope="module")
def setup(ray_session, micro_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(micro_model)
    batch = _batch(tok, 5, seed=0)  # odd count: exercises the padding copy
    exact = LearnerCluster(world_size=2, num_cpus=0.5, autocast_bf16=False)  # fp32, as the reference computes
    group = spawn_learners(micro_model, exact, OPTIM, micro_batch_size=2, pad_id=tok.pad_token_id)
    yield group, batch, tok
    group.shutdown()


def _scores(scorer, batch, temperature=1.0):
    """Per response, (log-probs, entropies) as 1-D tensors from a learner group or a reference (both return columns)."""
    out = scorer.logprobs_and_entropy(batch, temperature) if hasattr(scorer, "logprobs_and_entropy") else \
        scorer.score(batch, temperature=temperature)
    assert out["logprobs"].shape == out["entropy"].shape == batch.input_ids.shape
    cols = batch.union(out)
    return cols.per_response("logprobs"), cols.per_response("entropy")


def test_logprobs_match_single_process_reference(setup, micro_model):
    from workers.reference import Reference

    group, batch, _ = setup
    lps, ents = _scores(group, batch)
    ref_lps, ref_ents = _scores(Reference(micro_model), batch)
    assert len(lps) == len(batch)
    for i, (lp, ent, rlp, rent) in enumerate(zip(lps, ents, ref_lps, ref_ents)):
        assert len(lp) == len(batch.response_ids(i))
        assert torch.allclose(lp, rlp, atol=1e-4) and torch.allclose(ent, rent, atol=1e-4)


def test_logprobs_and_loss_at_the_sampling_temperature(setup, micro_model):
    """Samples drawn at T=0.6 are scored under softmax(logits / 0.6), by the learners as by the reference; the
    update's forward uses the same temperature, so the first PPO ratio is exactly 1 (ppo_kl 0)."""
    from workers.reference import Reference

    group, batch, _ = setup
    lp6, ent6 = _scores(group, batch, 0.6)
    lp1, _ = _scores(group, batch)
    ref_lp, ref_ent = _scores(Reference(micro_model), batch, 0.6)
    for a, e, rl, re, b in zip(lp6, ent6, ref_lp, ref_ent, lp1):
        assert torch.allclose(a, rl, atol=1e-4) and torch.allclose(e, re, atol=1e-4)
        assert float((a - b).abs().max()) > 1e-2
    given = batch.union({"old_logprobs": batch.response_column(lp6),
                         "advantages": torch.zeros_like(batch.loss_mask)})
    loss = GRPO_LOSS
    group.set_lr(0.0)  # measure the ratio without moving the weights
    assert abs(group.train_step(given, {**loss, "temperature": 0.6})["actor/ppo_kl"]) < 1e-5
    assert abs(group.train_step(given, loss)["actor/ppo_kl"]) > 1e-3  # scored at T=1: the ratio is off
    group.set_lr(OPTIM.lr)


def test_single_update_takes_old_logprobs_and_entropy_from_its_forward(setup):
    group, batch, _ = setup
    _, ents = _scores(group, batch, 0.6)
    ones = batch.union({"advantages": batch.loss_mask.clone()})
    group.set_lr(0.0)
    m = group.train_step(ones, {**GRPO_LOSS, "temperature": 0.6, "old_logprobs": "current"})
    group.set_lr(OPTIM.lr)
    assert m["actor/ppo_kl"] == 0.0 and m["actor/pg_clipfrac"] == 0.0
    assert m["entropy_tokens"] == float(batch.loss_mask.sum())
    assert m["entropy_sum"] == pytest.approx(float(sum(e.sum() for e in ents)), rel=1e-5)


def test_second_update_on_a_batch_clips(setup):
    """With mini-batches or epochs the policy moves between updates on the same rollouts: the ratio leaves 1 and
    PPO clipping acts (with one update per batch it never can)."""
    group, batch, _ = setup
    old = group.logprobs_and_entropy(batch)["logprobs"]
    given = batch.union({"old_logprobs": old, "advantages": batch.loss_mask.clone()})
    group.set_lr(3e-2)
    first = group.train_step(given, {**GRPO_LOSS, "old_logprobs": "given"})
    second = group.train_step(given, {**GRPO_LOSS, "old_logprobs": "given"})
    group.set_lr(OPTIM.lr)
    assert first["actor/pg_clipfrac"] == 0.0 and second["actor/pg_clipfrac"] > 0.0


def test_checkpoint_round_trips_adamw_state(setup, tmp_path):
    """Saved after optimizer steps and restored: the next step is the same as without the interruption, which
    needs AdamW's moments, not only the weights."""
    group, batch, _ = setup
    for _ in range(2):
        group.train_step(batch, {"kind": "sft"})
    group.save_checkpoint(str(tmp_path / "ckpt"))
    group.train_step(batch, {"kind": "sft"})
    straight = group.logprobs_and_entropy(batch)["logprobs"]
    group.load_checkpoint(str(tmp_path / "ckpt"))
    group.train_step(batch, {"kind": "sft"})
    resumed = group.logprobs_and_entropy(batch)["logprobs"]
    assert torch.allclose(straight, resumed, atol=1e-6)


def test_a_reset_optimizer_takes_adamws_first_step(setup, tmp_path):
    """trainer.grpo.optimizer=fresh: GRPO starts without SFT's moments, so its first update is AdamW's first step,
    lr * g / (|g| + eps): lr itself within 2% on nearly every weight with a gradient; with the moments carried on
    it is not (median 0.8 lr)."""
    from safetensors.torch import load

    group, batch, _ = setup
    for _ in range(2):
        group.train_step(batch, {"kind": "sft"})
    group.save_checkpoint(str(tmp_path / "ckpt"))
    before = load(group.state_bytes())

    def share_of_full_steps() -> float:
        group.train_step(batch, {"kind": "sft"})
        after = load(group.state_bytes())
        moved = torch.cat([(after[k] - before[k]).abs().flatten() / OPTIM.lr for k in before])
        moved = moved[moved > 0]
        return float(((moved - 1).abs() < 0.02).float().mean())

    carried = share_of_full_steps()
    group.load_checkpoint(str(tmp_path / "ckpt"))
    group.reset_optimizer()
    fresh = share_of_full_steps()
    assert fresh > 0.9 > 0.5 > carried


def test_sft_steps_lower_nll_and_checkpoint_round_trips(setup, tmp_path):
    group, batch, _ = setup
    before = group.logprobs_and_entropy(batch)["logprobs"]
    group.save_checkpoint(str(tmp_path / "ckpt"))
    nll = [group.train_step(batch, {"kind": "sft"})["sft/nll"] for _ in range(4)]
    # 5 sequences on 2 ranks (one padding copy): the loss is the token-mean over the whole batch
    assert nll[0] == pytest.approx(-float(before.sum()) / float(batch.loss_mask.sum()), rel=1e-4)
    assert nll[-1] < nll[0]
    after = group.logprobs_and_entropy(batch)["logprobs"]
    assert float(after.sum()) > float(before.sum())
    group.load_checkpoint(str(tmp_path / "ckpt"))
    restored = group.logprobs_and_entropy(batch)["logprobs"]
    assert torch.allclose(restored, before, atol=1e-5)


def test_the_gradient_norm_is_the_whole_batch_ones(setup, micro_model, tmp_path):
    """The ranks' losses are scaled by the world size over the whole batch's token count and FSDP2 averages their
    gradients: a reduction that summed, or a clip on one shard's norm, passed every other test (AdamW cancels a
    gradient's scale). Checked against the whole batch's token-mean NLL gradient in one plain process."""
    from safetensors.torch import load
    from transformers import AutoModelForCausalLM

    group, batch, _ = setup
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    model.load_state_dict(load(group.state_bytes()), strict=False)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    mask = batch.loss_mask[:, 1:].float()  # position t scores token t + 1
    (-(lp * mask).sum() / mask.sum()).backward()
    want = float(torch.sqrt(sum((q.grad ** 2).sum() for q in model.parameters() if q.grad is not None)))
    group.save_checkpoint(str(tmp_path / "ckpt"))
    got = group.train_step(batch, {"kind": "sft"})["grad_norm"]
    group.load_checkpoint(str(tmp_path / "ckpt"))  # the module's group goes on as it was
    assert got == pytest.approx(want, rel=1e-4)  # the norm the clip measured (clip_grad_norm_'s return)


def test_full_state_export_loads_in_transformers(setup, micro_model, tmp_path):
    from safetensors.torch import load
    from transformers import AutoModelForCausalLM

    group, seqs, _ = setup
    state = load(group.state_bytes())
    model = AutoModelForCausalLM.from_pretrained(micro_model)
    assert set(state) >= set(model.state_dict())
    group.save_hf(str(tmp_path / "hf"), micro_model)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("low_precision, exported", [({"param_dtype": "bfloat16"}, torch.bfloat16),
                                                      ({"autocast_bf16": True}, torch.float32)])
def test_low_precision_computes_in_bf16_trains_and_exports(ray_session, micro_model, low_precision, exported):
    """FSDP2 mixed precision computes and exports in bf16; autocast computes in bf16 over fp32 weights."""
    from safetensors.torch import load

    from workers.reference import Reference

    from transformers import AutoTokenizer

    batch = _batch(AutoTokenizer.from_pretrained(micro_model), 3, seed=1)
    group = spawn_learners(micro_model, LearnerCluster(world_size=2, num_cpus=0.25, **low_precision), OPTIM,
                           micro_batch_size=2, pad_id=0)
    try:
        lps = group.logprobs_and_entropy(batch)["logprobs"]
        gap = float((lps - Reference(micro_model).score(batch)["logprobs"]).abs().max())
        assert 0 < gap < 0.5  # computed in bf16: close to the fp32 reference, not equal to it
        before = load(group.state_bytes())
        assert all(v.dtype == exported for v in before.values() if v.is_floating_point())
        for _ in range(3):
            metrics = group.train_step(batch, {"kind": "sft"})
        assert torch.isfinite(torch.tensor(metrics["sft/nll"]))
        after = load(group.state_bytes())
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        group.shutdown()


def _batch(tok, n: int, seed: int) -> Batch:
    """``n`` held-out basket problems with their gold solutions as responses."""
    problems = generate(BasketConfig(), n, seed, "test")
    return Batch.from_pairs([tok(prompt_text(tok, p.prompt), add_special_tokens=False).input_ids for p in problems],
                            [tok(p.solution + EOS, add_special_tokens=False).input_ids for p in problems],
                            pad_id=tok.pad_token_id)
