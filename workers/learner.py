"""Learner rank: one FSDP2 (``fully_shard``) shard of the policy, in a process group with the other ranks.

Every rank receives its slice of each batch; all ranks run the same number of micro-batches so that FSDP's
collectives line up. Backend gloo on CPU, NCCL on GPU. Rank 0 gathers the full state dict for weight sync and
HF export; checkpoints are sharded with torch.distributed.checkpoint (DCP), so they scale past one rank's memory.
"""
from __future__ import annotations

import os

import ray
import torch
import torch.distributed as dist

from stepentropy_rl.batch import MicroBatch


class Learner:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, model_path: str,
                 optim: dict, backend: str = "gloo", dtype: str = "float32", threads: int = 0):
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model = shard_model(model)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=optim["lr"], betas=tuple(optim["betas"]),
                                       weight_decay=optim["weight_decay"])
        self.grad_clip = optim["grad_clip"]

    # ---- forward passes ------------------------------------------------------------------------------------------
    def logprobs_and_entropy(self, mbs: list[MicroBatch], chunk_rows: int = 2048) -> list[dict]:
        """Per micro-batch, token log-probs and exact full-vocabulary entropies at loss-mask positions ([B, T])."""
        self.model.eval()
        out = []
        with torch.no_grad():
            for mb in mbs:
                lp, ent = self._forward(mb, chunk_rows, with_entropy=True)
                out.append({"logprobs": lp.cpu(), "entropy": ent.cpu()})
        return out

    def _forward(self, mb: MicroBatch, chunk_rows: int, with_entropy: bool):
        from stepentropy_rl.entropy import token_entropy, token_logprobs

        ids = mb.input_ids.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mb.attention_mask.to(self.device)).logits[:, :-1]
        labels = ids[:, 1:]
        lp = torch.zeros_like(ids, dtype=torch.float32)
        lp[:, 1:] = token_logprobs(logits, labels, chunk_rows) if not torch.is_grad_enabled() else \
            torch.log_softmax(logits.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        ent = None
        if with_entropy:
            ent = torch.zeros_like(lp)
            with torch.no_grad():
                ent[:, 1:] = token_entropy(logits.detach(), chunk_rows)
        return lp * mb.loss_mask.to(self.device), ent

    # ---- updates -------------------------------------------------------------------------------------------------
    def train_step(self, mbs: list[MicroBatch], loss: dict) -> dict:
        """One optimizer step over all micro-batches (gradient accumulation). ``loss['kind']``: sft | grpo."""
        from stepentropy_rl.learner_loss import compute_loss

        self.model.train()
        totals: dict[str, float] = {}
        n = len(mbs)
        for mb in mbs:
            lp, _ = self._forward(mb, 2048, with_entropy=False)
            value, metrics = compute_loss(lp, mb, loss)
            (value / n).backward()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v / n
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        totals["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        return totals

    def set_lr(self, lr: float) -> None:
        for g in self.optim.param_groups:
            g["lr"] = lr

    # ---- weights and checkpoints ---------------------------------------------------------------------------------
    def state_bytes(self) -> bytes | None:
        """Full state dict as safetensors bytes on rank 0 (every rank must call: it is a collective)."""
        from safetensors.torch import save

        state = full_state_dict(self.model)
        if self.rank != 0:
            return None
        return save({k: v.contiguous() for k, v in state.items()})

    def save_hf(self, path: str, tokenizer_path: str) -> None:
        """Export the policy as a HF checkpoint (rank 0 writes; a collective)."""
        from transformers import AutoTokenizer

        state = full_state_dict(self.model)
        if self.rank == 0:
            self.model.save_pretrained(path, state_dict=state)
            AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(path)
        dist.barrier()

    def save_checkpoint(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)

    def load_checkpoint(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optim, model_state_dict=state["model"], optim_state_dict=state["optim"])

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def shard_model(model):
    """FSDP2: shard every decoder layer, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state_dict(model) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # With cpu_offload only rank 0 receives the tensors; the others get an empty dict.
    if state and getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return {k: v.clone() for k, v in state.items()}  # untie shared storage for safetensors


LearnerWorker = ray.remote(Learner)
