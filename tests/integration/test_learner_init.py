"""Learner start-up (``workers.learner.load_sharded``) on two gloo ranks without Ray: only rank 0 reads the
checkpoint, and every rank ends with exactly the checkpoint's weights, buffers and tying."""
import json

import pytest
import torch

from stepentropy_rl.config import LearnerCluster


def _rank(rank: int, model_path: str, checkpointing: bool, port: int, out: str) -> None:
    import torch.distributed as dist
    import transformers
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from workers.learner import load_sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    load = transformers.AutoModelForCausalLM.from_pretrained
    reads = []
    transformers.AutoModelForCausalLM.from_pretrained = lambda *a, **k: reads.append(a) or load(*a, **k)
    try:
        cluster = LearnerCluster(world_size=2, gradient_checkpointing=checkpointing)
        model = load_sharded(model_path, cluster, rank, torch.device("cpu"))
    finally:
        transformers.AutoModelForCausalLM.from_pretrained = load
    ref = load(model_path, dtype=torch.float32)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        same_logits = torch.equal(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    result = {"reads": len(reads),
              "params_meta_free": not any(p.is_meta for p in model.parameters()),
              "same_state": sorted(state) == sorted(ref.state_dict()) and all(
                  torch.equal(state[k], ref.state_dict()[k]) for k in state),
              "same_buffers": all(torch.equal(b, dict(ref.named_buffers())[n]) for n, b in model.named_buffers()),
              "tied": model.lm_head.weight is model.model.embed_tokens.weight,
              "ref_tied": ref.lm_head.weight is ref.model.embed_tokens.weight,
              "same_logits": same_logits}
    model.train()
    model(input_ids=ids).logits.float().pow(2).mean().backward()  # a training step's backward (checkpointed or not)
    result["finite_grads"] = all(bool(p.grad.full_tensor().isfinite().all()) for p in model.parameters())
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


@pytest.mark.parametrize("which, checkpointing", [("micro_model", False), ("r1_standin", True)])
def test_only_rank0_reads_the_checkpoint_and_all_ranks_get_its_weights(which, checkpointing, request, tmp_path):
    """Tied embeddings (the tiny reasoner) and R1's untied 152k vocabulary with gradient checkpointing (gpu_8x)."""
    import socket

    import torch.multiprocessing as mp

    model_path = request.getfixturevalue(which)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(model_path, checkpointing, port, str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["reads"], r1["reads"]) == (1, 0)  # rank 1 built its model on the meta device
    for r in (r0, r1):
        assert r["params_meta_free"] and r["same_state"] and r["same_buffers"] and r["same_logits"]
        assert r["finite_grads"]
        assert r["tied"] == r["ref_tied"]
