"""Reference worker: a Ray actor holding a frozen HF model that scores exact token entropies and log-probs."""
from __future__ import annotations

import ray
import torch

from stepentropy_rl.entropy import score_responses


class Reference:
    """Frozen causal LM for teacher-forced scoring (full-vocabulary entropy and log-probs, fp32)."""

    def __init__(self, model_path: str, dtype: str = "float32", threads: int = 0):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        self.pad_id = self.tokenizer.pad_token_id or 0

    def score(self, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 16,
              chunk_rows: int = 2048) -> list[dict[str, list[float]]]:
        """Per pair ``{entropy, logprobs}`` over the response tokens, as plain lists (cheap to ship through Ray)."""
        with torch.no_grad():
            out = score_responses(self.model, prompts, responses, batch_size=batch_size, chunk_rows=chunk_rows,
                                  pad_id=self.pad_id)
        return [{k: v.tolist() for k, v in o.items()} for o in out]


ReferenceWorker = ray.remote(Reference)
