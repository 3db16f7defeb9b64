"""Learner rank: one FSDP2 (``fully_shard``) shard of the policy, in a process group with the other ranks.

Every rank receives its slice of each batch; all ranks run the same number of micro-batches so that FSDP's
collectives line up. Backend gloo on CPU, NCCL on GPU. Only rank 0 reads the checkpoint (``load_sharded``). Rank 0
gathers the full state dict for weight sync and HF export; checkpoints are sharded with torch.distributed.checkpoint
(DCP), so they scale past one rank's memory.
"""
from __future__ import annotations

import datetime

import ray
import torch
import torch.distributed as dist

from stepentropy_rl.batch import Batch
from stepentropy_rl.config import LearnerCluster, OptimConfig
from stepentropy_rl.heap import keep_freed_memory


class Learner:
    """Rank ``rank`` of ``world_size``; ``cluster``: ``config.LearnerCluster`` (backend, dtypes, threads),
    ``optim``: ``config.OptimConfig`` (AdamW)."""

    def __init__(self, rank: int, world_size: int, rendezvous: str, model_path: str, cluster: LearnerCluster,
                 optim: OptimConfig):
        if cluster.threads:
            torch.set_num_threads(cluster.threads)
        dist.init_process_group(cluster.backend, init_method=rendezvous, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=cluster.pg_timeout_s))
        self.rank, self.world_size = rank, world_size
        nccl = cluster.backend == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        if not nccl:
            keep_freed_memory()  # a CPU rank trains until it exits (stepentropy_rl/heap.py)
        self.model = load_sharded(model_path, cluster, rank, self.device)
        self.autocast = bool(cluster.autocast_bf16)  # forward passes in bf16 over the fp32 weights
        # weights leave the learner in the compute dtype
        self.export_dtype = getattr(torch, cluster.param_dtype or cluster.dtype)
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                       weight_decay=optim.weight_decay)
        self.grad_clip = optim.grad_clip

    # ---- forward passes ------------------------------------------------------------------------------------------
    def logprobs_and_entropy(self, batch: Batch, micro_batch_size: int, temperature: float = 1.0,
                             chunk_rows: int = 2048) -> dict[str, torch.Tensor]:
        """Columns ``logprobs`` and ``entropy`` ([B, T] like ``batch``, 0 off the loss mask): token log-probs and
        exact full-vocabulary entropies of softmax(logits / temperature), computed ``micro_batch_size`` rows at a
        time."""
        self.model.eval()
        lps, ents = [], []
        with torch.no_grad():
            for mb in batch.chunk(micro_batch_size):
                lp, ent = self._forward(mb, chunk_rows, with_entropy=True, temperature=temperature)
                lps.append(_pad_to(lp.cpu(), batch.width))
                ents.append(_pad_to((ent * mb.loss_mask.to(ent.device)).cpu(), batch.width))
        return {"logprobs": torch.cat(lps), "entropy": torch.cat(ents)}

    def _forward(self, mb: Batch, chunk_rows: int, with_entropy: bool, temperature: float = 1.0):
        """Log-probs (and entropies) under softmax(logits / temperature): the distribution that sampled the batch."""
        from stepentropy_rl.entropy import token_entropy, token_logprobs

        ids = mb.input_ids.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(input_ids=ids, attention_mask=mb.attention_mask.to(self.device)).logits
        # scaled by the temperature per fp32 chunk, as the reference and vLLM's sampler scale it (dividing the bf16
        # logits of a mixed-precision learner rounds twice: a KL of about 0.001 nats to an identical reference)
        # Position t predicts token t+1. Scoring all positions against the ids shifted left keeps ``logits``
        # contiguous (no copy of the [B, T, vocab] tensor); the last position's dummy label is dropped.
        nxt = torch.roll(ids, -1, dims=1)
        lp = torch.zeros_like(ids, dtype=torch.float32)
        lp[:, 1:] = token_logprobs(logits, nxt, chunk_rows, temperature)[:, :-1]  # chunked fp32, checkpointed
        ent = None
        if with_entropy:
            ent = torch.zeros_like(lp)
            with torch.no_grad():
                ent[:, 1:] = token_entropy(logits.detach(), chunk_rows, temperature)[:, :-1]
        return lp * mb.loss_mask.to(self.device), ent

    # ---- updates -------------------------------------------------------------------------------------------------
    def train_step(self, batch: Batch, micro_batch_size: int, loss: dict) -> dict:
        """One optimizer step over ``batch`` in micro-batches of ``micro_batch_size`` rows (gradient accumulation).
        ``loss['kind']``: sft | grpo; GRPO reads the columns ``advantages``, ``old_logprobs``, ``ref_logprobs``.

        The loss is normalised by the token and sequence counts of the whole batch across ranks (verl's
        ``global_batch_info``), so the gradient is the whole batch's aggregate however it was split.
        ``loss['old_logprobs'] == "current"`` (GRPO with one update per rollout batch): the old log-probs are this
        forward's own, detached, and the entropy comes from the same forward (``entropy_sum``, ``entropy_tokens``),
        which saves the separate scoring pass.
        """
        from stepentropy_rl.algorithms import global_batch_info
        from stepentropy_rl.learner_loss import compute_loss, step_metrics

        self.model.train()
        per_micro_batch = []
        mbs = batch.chunk(micro_batch_size)
        gb = global_batch_info([mb.loss_mask.to(self.device) for mb in mbs], self.world_size, dist.all_reduce)
        current = loss.get("old_logprobs") == "current"
        ent_sum, ent_tokens = 0.0, 0.0
        for mb in mbs:
            lp, ent = self._forward(mb, 2048, with_entropy=current, temperature=loss.get("temperature", 1.0))
            old = None
            if current:
                old = lp.detach()
                mask = mb.loss_mask.to(self.device)
                ent_sum, ent_tokens = ent_sum + float((ent * mask).sum()), ent_tokens + float(mask.sum())
            value, metrics = compute_loss(lp, mb, loss, gb, old_logprobs=old)
            value.backward()
            per_micro_batch.append((metrics, bool(mb.loss_mask.any())))
        totals = step_metrics(per_micro_batch)
        if current:
            totals.update(entropy_sum=ent_sum, entropy_tokens=ent_tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optim.step()
        self.optim.zero_grad(set_to_none=True)
        totals["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        return totals

    def set_lr(self, lr: float) -> None:
        for g in self.optim.param_groups:
            g["lr"] = lr

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and step counts (AdamW starts afresh at its next step)."""
        self.optim.state.clear()

    # ---- weights and checkpoints ---------------------------------------------------------------------------------
    def _export_items(self) -> list:
        """``(name, sharded tensor)`` of everything a weight push sends, in state-dict order (the same on every
        rank); a tied ``lm_head.weight`` is sent too, since the engines need the complete state dict. Floating-point
        entries only: a push sends one dtype (``weight_sync.plan_buckets``), which would turn an integer or bool
        buffer (a constant the engine loaded with the checkpoint; Qwen2 and Llama have none) into floats."""
        items = [(n, t) for n, t in self.model.state_dict().items() if t.is_floating_point()]
        if getattr(self.model.config, "tie_word_embeddings", False) and "lm_head.weight" not in dict(items):
            items.append(("lm_head.weight", dict(items)["model.embed_tokens.weight"]))
        return items

    def weight_specs(self) -> tuple[str, list]:
        """The export dtype and ``[(name, full shape)]`` of a weight push, for ``weight_sync.plan_buckets``."""
        return str(self.export_dtype).removeprefix("torch."), [(n, list(t.shape)) for n, t in self._export_items()]

    def open_weight_group(self, url: str, world_size: int, backend: str, timeout_s: float = 600.0) -> None:
        """Rank 0 hosts the weight-sync group with the engines (``weight_sync.open_group``); other ranks stay out."""
        from stepentropy_rl.weight_sync import reopen_group

        if self.rank == 0:  # a reopen (an engine was restarted) aborts the old group first
            self._weight_group = reopen_group(getattr(self, "_weight_group", None), url, 0, world_size, backend,
                                              timeout_s)

    def push_weights(self, plan: list) -> int:
        """A collective over the learner ranks: each full tensor is all-gathered in turn and rank 0 broadcasts the
        buckets of ``plan`` to the engines; returns the bytes rank 0 sent (0 elsewhere)."""
        from stepentropy_rl.weight_sync import send

        def full_tensors():
            for name, t in self._export_items():  # cast each shard first: a bf16 gather moves half an fp32 one
                t = t.to(self.export_dtype)
                yield name, t.full_tensor() if hasattr(t, "full_tensor") else t

        group = self._weight_group[1] if self.rank == 0 else None
        with torch.no_grad():
            return send(group, plan, full_tensors(), self.device)

    def state_bytes(self) -> bytes | None:
        """Full state dict as safetensors bytes on rank 0 (every rank must call: it is a collective)."""
        from safetensors.torch import save

        state = full_state_dict(self.model, self.export_dtype)
        if self.rank != 0:
            return None
        return save({k: v.contiguous() for k, v in state.items()})

    def save_hf(self, path: str, tokenizer_path: str) -> None:
        """Export the policy as a HF checkpoint (rank 0 writes; a collective)."""
        state = full_state_dict(self.model, self.export_dtype)
        if self.rank == 0:
            export_hf(self.model, state, self.export_dtype, path, tokenizer_path)
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


def _pad_to(t: torch.Tensor, width: int) -> torch.Tensor:
    """[b, t] zero-padded on the right to [b, width] (a micro-batch is trimmed to its own width)."""
    return t if t.shape[1] == width else torch.nn.functional.pad(t, (0, width - t.shape[1]))


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass (transformers' gradient checkpointing,
    non-reentrant, turned on before sharding as verl does): a 7B GRPO micro-batch of 2 x 4.4k tokens keeps about
    57 GB of activations without it. The same gradients, about a third more compute."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def load_sharded(model_path: str, cluster: LearnerCluster, rank: int, device: torch.device):
    """The policy in ``cluster.dtype``, FSDP2-sharded on ``device`` (a collective over the learner ranks).

    Only rank 0 reads the checkpoint; the other ranks build the model on the meta device (no memory), shard it, and
    receive rank 0's weights tensor by tensor, and its buffers (rotary frequencies, which the state dict leaves out),
    by broadcast, as verl's meta-tensor init does. Every rank loading the whole checkpoint in fp32 took 30 GB of host
    memory per rank for a 7B model (240 GB on an 8-GPU node).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(torch, cluster.dtype)
    if rank == 0:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
        full = model.state_dict()
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=dtype)
        full = {}
    if cluster.gradient_checkpointing:
        enable_checkpointing(model)
    model = shard_model(model, cluster.param_dtype)
    if rank == 0:
        model.to(device)
    else:
        model.to_empty(device=device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for _, buf in model.named_buffers():
        dist.broadcast(buf, src=0)
    return model


def shard_model(model, param_dtype: str | None = None):
    """FSDP2: shard every decoder layer, then the root (embeddings, norm, head).

    ``param_dtype`` (e.g. "bfloat16") turns on FSDP2 mixed precision: the sharded parameters and the optimizer
    state stay in the dtype the model was loaded in (fp32 master weights), forward and backward run in
    ``param_dtype``, and gradients are reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=getattr(torch, param_dtype), reduce_dtype=torch.float32) \
        if param_dtype else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def full_state_dict(model, dtype: torch.dtype | None = None) -> dict:
    """The unsharded state dict on rank 0 (others get {}), floating tensors cast to ``dtype`` if given."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # With cpu_offload only rank 0 receives the tensors; the others get an empty dict.
    if state and getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    cast = (lambda v: v.to(dtype) if dtype is not None and v.is_floating_point() else v)
    return {k: cast(v).clone() for k, v in state.items()}  # untie shared storage for safetensors


def export_hf(model, state: dict, dtype: torch.dtype, path: str, tokenizer_path: str) -> None:
    """``state`` (in ``dtype``) saved as ``model``'s HF checkpoint with the tokenizer of ``tokenizer_path``, fsynced.
    ``config.json`` names ``dtype``: ``save_pretrained`` writes the model's own dtype there, the fp32 master weights
    under FSDP2 with bf16 compute, and ``from_pretrained`` would then load a bf16 export at twice its size."""
    from stepentropy_rl.files import fsync_tree
    from stepentropy_rl.tokenizer import copy_tokenizer

    model.save_pretrained(path, state_dict=state)
    model.config.dtype = dtype
    model.config.save_pretrained(path)
    copy_tokenizer(tokenizer_path, path)
    fsync_tree(path)  # on disk before the stage marker that vouches for it


LearnerWorker = ray.remote(Learner)
