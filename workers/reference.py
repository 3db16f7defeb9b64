"""Reference worker: a Ray actor holding a frozen HF model that scores exact token entropies and log-probs."""
from __future__ import annotations

import ray
import torch

from stepentropy_rl.batch import Batch
from stepentropy_rl.entropy import score_responses
from stepentropy_rl.heap import keep_freed_memory


class Reference:
    """Frozen causal LM for teacher-forced scoring (full-vocabulary entropy and log-probs, fp32).

    ``device`` None places the model on the GPU Ray gave this actor (``cluster.reference.num_gpus``), else the CPU.
    Its CPU threads come from ``OMP_NUM_THREADS`` (``cluster.reference.threads``, ``roles.thread_env``).
    """

    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None):
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            keep_freed_memory()  # it scores until it exits (stepentropy_rl/heap.py)
        self.load(model_path)

    def load(self, model_path: str) -> str:
        """(Re)load the frozen model, e.g. the SFT model as the KL reference of GRPO."""
        from transformers import AutoModelForCausalLM

        from stepentropy_rl.tokenizer import load_tokenizer

        self.model = None  # free the old weights first
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype).to(self.device).eval()
        tok = load_tokenizer(model_path)
        self.pad_id = tok.pad_token_id or 0
        self.model_path = model_path
        return model_path

    def score(self, batch: Batch, batch_size: int = 16, chunk_rows: int = 2048,
              temperature: float = 1.0, progress: tuple | None = None,
              model_path: str | None = None) -> dict[str, torch.Tensor]:
        """Columns ``entropy`` and ``logprobs`` ([B, T] like ``batch``) of its response tokens under
        softmax(logits / temperature); GRPO passes the temperature that sampled the responses. ``progress``:
        (board, key) to report scored rows to (``stepentropy_rl.progress_report``). ``model_path``: the model the
        caller means (GRPO's KL reference); a different one is loaded first. Ray restarts a dead reference with the
        model it was started with, so without it a restart mid-GRPO would score against the pre-SFT base."""
        from stepentropy_rl.progress_report import Reporter

        if model_path is not None and model_path != self.model_path:
            self.load(model_path)

        prompts = [batch.prompt_ids(i) for i in range(len(batch))]
        responses = [batch.response_ids(i) for i in range(len(batch))]
        out, done = [], Reporter(progress)
        with torch.no_grad():
            for b in range(0, len(batch), batch_size):  # the batches score_responses would cut
                out += score_responses(self.model, prompts[b:b + batch_size], responses[b:b + batch_size],
                                       batch_size=batch_size, chunk_rows=chunk_rows, pad_id=self.pad_id,
                                       temperature=temperature)
                done.update(len(prompts[b:b + batch_size]))
        done.close()
        return {k: batch.response_column([o[k] for o in out]) for k in ("entropy", "logprobs")}

    def runtime_tag(self) -> dict:
        """This node's libraries, CPU kernels and GPU (``cot_cache.runtime_tag``): the entropies' bits depend on them."""
        from stepentropy_rl.cot_cache import runtime_tag

        return runtime_tag()

    def num_threads(self) -> int:
        """torch's intra-op threads in this actor (``cluster.reference.threads``)."""
        return torch.get_num_threads()


ReferenceWorker = ray.remote(Reference)
