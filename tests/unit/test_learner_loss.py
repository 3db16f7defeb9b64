"""Learner losses: splitting a batch across ranks and micro-batches does not change its aggregate."""
import pytest
import torch

from stepentropy_rl.algorithms import global_batch_info
from stepentropy_rl.batch import Batch
from stepentropy_rl.learner_loss import SHARED_METRICS, compute_loss

GRPO = {"kind": "grpo", "clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 3.0, "kl_coef": 0.1,
        "kl_type": "low_var_kl"}


def _batch(lengths, seed=0):
    """Rows with ``lengths`` response tokens (0 = a padding copy), 2 prompt tokens each, random per-token values."""
    g = torch.Generator().manual_seed(seed)
    t = 2 + max(lengths)
    mask = torch.zeros(len(lengths), t)
    for i, n in enumerate(lengths):
        mask[i, 2: 2 + n] = 1
    lp = -torch.rand(len(lengths), t, generator=g) * mask
    columns = {"old_logprobs": lp + 0.1 * torch.randn(lp.shape, generator=g) * mask,
               "ref_logprobs": lp + 0.2 * torch.randn(lp.shape, generator=g) * mask,
               "advantages": torch.randn(len(lengths), 1, generator=g).expand(-1, t) * mask}
    mb = Batch(input_ids=torch.zeros(len(lengths), t, dtype=torch.long),
               attention_mask=torch.ones(len(lengths), t, dtype=torch.long), loss_mask=mask,
               prompt_lens=torch.full((len(lengths),), 2), columns=columns)
    return lp, mb


def _rows(lp, mb, idx):
    return lp[idx], mb.select(idx)


@pytest.mark.parametrize("loss", [{"kind": "sft"}, {**GRPO, "loss_agg_mode": "token-mean"},
                                  {**GRPO, "loss_agg_mode": "seq-mean-token-mean"},
                                  {**GRPO, "loss_agg_mode": "seq-mean-token-sum"},
                                  {**GRPO, "loss_agg_mode": "seq-mean-token-sum-norm", "loss_scale_factor": 16}])
def test_split_over_ranks_and_micro_batches_equals_whole_batch(loss):
    lengths = [9, 1, 4, 7, 2, 3, 0]  # uneven lengths and one padding copy, as learner_group hands them out
    lp, mb = _batch(lengths)
    whole, whole_metrics = compute_loss(lp, mb, loss)
    ranks = [[[0, 1], [2]], [[3, 4], [5, 6]]]  # 2 ranks x 2 micro-batches
    parts = [[_rows(lp, mb, torch.tensor(rows)) for rows in rank] for rank in ranks]
    masks = [[m.loss_mask for _, m in rank] for rank in parts]
    total = sum(m.sum() for ms in masks for m in ms)
    gb = global_batch_info([m for ms in masks for m in ms], dp_size=2)  # one process standing in for both
    assert gb["batch_num_tokens"] == total == sum(lengths) and gb["global_batch_size"] == 6
    per_rank, metric = [], []
    for rank in parts:
        values = [compute_loss(p, m, loss, gb) for p, m in rank]
        per_rank.append(sum(v for v, _ in values))
        metric.append({k: sum(m[k] for _, m in values) for k in SHARED_METRICS if k in values[0][1]})
    assert torch.allclose(sum(per_rank) / 2, whole, atol=1e-6)  # FSDP averages the ranks' gradients
    for k, v in whole_metrics.items():
        if k in SHARED_METRICS:
            assert sum(m[k] for m in metric) / 2 == pytest.approx(v, abs=1e-6)
    # the per-micro-batch mean that this replaces weighs tokens by where they land
    naive = sum(compute_loss(p, m, loss)[0] for rank in parts for p, m in rank) / 4
    assert not torch.allclose(naive, whole, atol=1e-3)


@pytest.mark.parametrize("factor", [1.5, 0.5, 16])
def test_the_norm_mode_divides_by_the_factor_as_given(factor):
    """seq-mean-token-sum-norm is the seq-mean-token-sum divided by loss_scale_factor, a fractional one included (it
    was cut to an int: 1.5 divided by 1, 0.5 by 0)."""
    lp, mb = _batch([9, 1, 4, 7])
    summed, _ = compute_loss(lp, mb, {**GRPO, "kl_coef": 0.0, "loss_agg_mode": "seq-mean-token-sum"})
    norm, _ = compute_loss(lp, mb, {**GRPO, "kl_coef": 0.0, "loss_agg_mode": "seq-mean-token-sum-norm",
                                    "loss_scale_factor": factor})
    assert torch.allclose(norm * factor, summed, atol=1e-6)


def test_empty_micro_batch_gives_zero_loss():
    lp, mb = _batch([0, 0])
    value, _ = compute_loss(lp, mb, {"kind": "sft"})
    assert value.item() == 0.0


def test_global_counts_are_summed_across_ranks():
    calls = []

    def fake_all_reduce(t):  # a second rank with 5 tokens in 2 sequences
        calls.append(t.clone())
        t += torch.tensor([5.0, 2.0], dtype=t.dtype)

    gb = global_batch_info([torch.tensor([[0.0, 1, 1], [0, 0, 0]])], dp_size=2, all_reduce=fake_all_reduce)
    assert gb == {"dp_size": 2, "batch_num_tokens": 7, "global_batch_size": 3}
    assert calls[0].tolist() == [2.0, 1.0]


def test_a_kl_coefficient_without_reference_log_probs_is_an_error():
    lp, mb = _batch([3, 2])
    del mb.columns["ref_logprobs"]
    with pytest.raises(ValueError, match="kl_coef is 0.1 but the batch has no ref_logprobs column"):
        compute_loss(lp, mb, {**GRPO, "loss_agg_mode": "token-mean"})
    value, metrics = compute_loss(lp, mb, {**GRPO, "kl_coef": 0.0, "loss_agg_mode": "token-mean"})
    assert "actor/kl_loss" not in metrics and torch.isfinite(value)


def test_a_mixed_precision_learner_scales_its_bf16_logits_in_fp32():
    """The learner's log-probs at the sampling temperature come from its bf16 logits upcast, then divided, as the
    reference and vLLM's sampler compute them; dividing in bf16 showed a KL to an identical reference."""
    from types import SimpleNamespace

    from stepentropy_rl.entropy import token_logprobs
    from workers.learner import Learner

    torch.manual_seed(0)
    batch = Batch.from_pairs([[1, 2], [3]], [[4, 5, 6], [7, 8]], pad_id=0)
    logits = (4 * torch.randn(*batch.input_ids.shape, 300)).to(torch.bfloat16)
    learner = SimpleNamespace(model=lambda input_ids, attention_mask: SimpleNamespace(logits=logits.clone()),
                              device=torch.device("cpu"), autocast=False)
    lp, ent = Learner._forward(learner, batch, 4, True, temperature=0.6)
    want = torch.zeros_like(lp)
    want[:, 1:] = token_logprobs(logits.float() / 0.6, torch.roll(batch.input_ids, -1, dims=1))[:, :-1]
    assert torch.equal(lp, want * batch.loss_mask) and batch.loss_mask.sum() == 5


def test_gradient_checkpointing_keeps_the_gradients_and_is_on_for_the_gpu_cluster():
    """``cluster.learner.gradient_checkpointing`` (on in ``cluster=gpu_8x``): the same gradients from recomputed
    activations; without it a 7B GRPO micro-batch kept about 57 GB of them."""
    from pathlib import Path

    from omegaconf import OmegaConf
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.learner import enable_checkpointing

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).train()
        if checkpointed:
            enable_checkpointing(model)
            assert model.is_gradient_checkpointing and not model.config.use_cache
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    conf = Path(__file__).resolve().parents[2] / "conf" / "cluster"
    assert OmegaConf.load(conf / "gpu_8x.yaml").learner.gradient_checkpointing is True
    assert OmegaConf.load(conf / "local_cpu.yaml").learner.gradient_checkpointing is False


def test_a_micro_batch_of_padding_rows_does_not_dilute_the_step_means():
    """33 rows over 2 ranks at micro-batches of 16: the second rank's slice is 16 rows and a padding copy, which forms
    a micro-batch of its own whose means are 0; averaged in, they halved that rank's clip fraction and ratio means."""
    from stepentropy_rl.learner_loss import step_metrics

    lp, mb = _batch([5, 3, 4, 6, 0])  # the last row: a padding copy with an empty loss mask
    gb = global_batch_info([mb.loss_mask])
    real = _rows(lp, mb, torch.arange(4))
    pad = _rows(lp, mb, torch.tensor([4]))
    loss = {**GRPO, "loss_agg_mode": "token-mean"}
    parts = [compute_loss(real[0], real[1], loss, gb)[1], compute_loss(pad[0], pad[1], loss, gb)[1]]
    got = step_metrics([(parts[0], True), (parts[1], False)])
    means = [k for k in parts[0] if k not in SHARED_METRICS and parts[0][k] != 0]
    assert means and all(got[k] == pytest.approx(parts[0][k]) for k in means)
    assert all(got[k] == pytest.approx(parts[0][k] + parts[1][k]) for k in SHARED_METRICS if k in got)
