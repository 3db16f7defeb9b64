"""FSDP2 learners (2 ranks, gloo) in a placement group: exact log-probs, SFT steps, full-state export, checkpoints."""
import pytest
import torch

from stepentropy_rl.batch import Sequence
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
    seqs = [Sequence(tok(prompt_text(tok, p.prompt), add_special_tokens=False).input_ids,
                     tok(p.solution + EOS, add_special_tokens=False).input_ids)
            for p in generate(BasketConfig(), 5, 0, "test")]  # odd count: exercises the padding copy
    group = spawn_learners(micro_model, LearnerCluster(world_size=2, num_cpus=0.5), OPTIM, micro_batch_size=2,
                           pad_id=tok.pad_token_id)
    yield group, seqs, tok
    group.shutdown()


def test_logprobs_match_single_process_reference(setup, micro_model):
    from workers.reference import Reference

    group, seqs, _ = setup
    lps, ents = group.logprobs_and_entropy(seqs)
    ref = Reference(micro_model).score([s.prompt_ids for s in seqs], [s.response_ids for s in seqs])
    assert len(lps) == len(seqs)
    for lp, ent, r, s in zip(lps, ents, ref, seqs):
        assert len(lp) == len(s.response_ids)
        assert torch.allclose(torch.tensor(lp), torch.tensor(r["logprobs"]), atol=1e-4)
        assert torch.allclose(torch.tensor(ent), torch.tensor(r["entropy"]), atol=1e-4)


def test_logprobs_and_loss_at_the_sampling_temperature(setup, micro_model):
    """Samples drawn at T=0.6 are scored under softmax(logits / 0.6), by the learners as by the reference; the
    update's forward uses the same temperature, so the first PPO ratio is exactly 1 (ppo_kl 0)."""
    from workers.reference import Reference

    group, seqs, _ = setup
    lp6, ent6 = group.logprobs_and_entropy(seqs, 0.6)
    lp1, _ = group.logprobs_and_entropy(seqs)
    ref = Reference(micro_model).score([s.prompt_ids for s in seqs], [s.response_ids for s in seqs], temperature=0.6)
    for a, e, r, b in zip(lp6, ent6, ref, lp1):
        assert torch.allclose(torch.tensor(a), torch.tensor(r["logprobs"]), atol=1e-4)
        assert torch.allclose(torch.tensor(e), torch.tensor(r["entropy"]), atol=1e-4)
        assert float((torch.tensor(a) - torch.tensor(b)).abs().max()) > 1e-2
    batch = [Sequence(s.prompt_ids, s.response_ids, {"old_logprobs": lp, "advantages": [0.0] * len(lp)})
             for s, lp in zip(seqs, lp6)]
    loss = GRPO_LOSS
    group.set_lr(0.0)  # measure the ratio without moving the weights
    assert abs(group.train_step(batch, {**loss, "temperature": 0.6})["actor/ppo_kl"]) < 1e-5
    assert abs(group.train_step(batch, loss)["actor/ppo_kl"]) > 1e-3  # scored at T=1: the ratio is off
    group.set_lr(OPTIM.lr)


def test_single_update_takes_old_logprobs_and_entropy_from_its_forward(setup):
    group, seqs, _ = setup
    lps, ents = group.logprobs_and_entropy(seqs, 0.6)
    batch = [Sequence(s.prompt_ids, s.response_ids, {"advantages": [1.0] * len(s.response_ids)}) for s in seqs]
    group.set_lr(0.0)
    m = group.train_step(batch, {**GRPO_LOSS, "temperature": 0.6, "old_logprobs": "current"})
    group.set_lr(OPTIM.lr)
    assert m["actor/ppo_kl"] == 0.0 and m["actor/pg_clipfrac"] == 0.0
    assert m["entropy_tokens"] == sum(len(s.response_ids) for s in seqs)
    assert m["entropy_sum"] == pytest.approx(sum(map(sum, ents)), rel=1e-5)


def test_second_update_on_a_batch_clips(setup):
    """With mini-batches or epochs the policy moves between updates on the same rollouts: the ratio leaves 1 and
    PPO clipping acts (with one update per batch it never can)."""
    group, seqs, _ = setup
    old, _ = group.logprobs_and_entropy(seqs)
    batch = [Sequence(s.prompt_ids, s.response_ids, {"old_logprobs": lp, "advantages": [1.0] * len(lp)})
             for s, lp in zip(seqs, old)]
    group.set_lr(3e-2)
    first = group.train_step(batch, {**GRPO_LOSS, "old_logprobs": "given"})
    second = group.train_step(batch, {**GRPO_LOSS, "old_logprobs": "given"})
    group.set_lr(OPTIM.lr)
    assert first["actor/pg_clipfrac"] == 0.0 and second["actor/pg_clipfrac"] > 0.0


def test_checkpoint_round_trips_adamw_state(setup, tmp_path):
    """Saved after optimizer steps and restored: the next step is the same as without the interruption, which
    needs AdamW's moments, not only the weights."""
    group, seqs, _ = setup
    for _ in range(2):
        group.train_step(seqs, {"kind": "sft"})
    group.save_checkpoint(str(tmp_path / "ckpt"))
    group.train_step(seqs, {"kind": "sft"})
    straight, _ = group.logprobs_and_entropy(seqs)
    group.load_checkpoint(str(tmp_path / "ckpt"))
    group.train_step(seqs, {"kind": "sft"})
    resumed, _ = group.logprobs_and_entropy(seqs)
    for a, b in zip(straight, resumed):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6)


def test_sft_steps_lower_nll_and_checkpoint_round_trips(setup, tmp_path):
    group, seqs, _ = setup
    before, _ = group.logprobs_and_entropy(seqs)
    group.save_checkpoint(str(tmp_path / "ckpt"))
    nll = [group.train_step(seqs, {"kind": "sft"})["sft/nll"] for _ in range(4)]
    # 5 sequences on 2 ranks (one padding copy): the loss is the token-mean over the whole batch
    assert nll[0] == pytest.approx(-sum(map(sum, before)) / sum(map(len, before)), rel=1e-4)
    assert nll[-1] < nll[0]
    after, _ = group.logprobs_and_entropy(seqs)
    assert sum(map(sum, after)) > sum(map(sum, before))
    group.load_checkpoint(str(tmp_path / "ckpt"))
    restored, _ = group.logprobs_and_entropy(seqs)
    for a, b in zip(restored, before):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)


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


def test_mixed_precision_computes_in_bf16_trains_and_exports_bf16(ray_session, micro_model):
    from safetensors.torch import load

    from workers.reference import Reference

    tok_seqs = _seqs(micro_model, 3)
    group = spawn_learners(micro_model, LearnerCluster(world_size=2, num_cpus=0.25, param_dtype="bfloat16"), OPTIM,
                           micro_batch_size=2, pad_id=0)
    try:
        lps, _ = group.logprobs_and_entropy(tok_seqs)
        ref = Reference(micro_model).score([s.prompt_ids for s in tok_seqs], [s.response_ids for s in tok_seqs])
        gap = max(float((torch.tensor(lp) - torch.as_tensor(r["logprobs"])).abs().max()) for lp, r in zip(lps, ref))
        assert 0 < gap < 0.5  # computed in bf16: close to the fp32 reference, not equal to it
        before = load(group.state_bytes())
        assert all(v.dtype == torch.bfloat16 for v in before.values() if v.is_floating_point())
        for _ in range(3):
            metrics = group.train_step(tok_seqs, {"kind": "sft"})
        assert torch.isfinite(torch.tensor(metrics["sft/nll"]))
        after = load(group.state_bytes())
        assert any(not torch.equal(before[k], after[k]) for k in before)
    finally:
        group.shutdown()


def _seqs(model_path, n):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    return [Sequence(tok(prompt_text(tok, p.prompt), add_special_tokens=False).input_ids,
                     tok(p.solution + EOS, add_special_tokens=False).input_ids)
            for p in generate(BasketConfig(), n, 1, "test")]
