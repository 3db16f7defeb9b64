"""Rollout worker: a Ray actor that holds one vLLM engine and generates responses."""
from __future__ import annotations

import os
from typing import Any

import ray


class Rollout:
    """One vLLM engine. ``generate`` takes chat-formatted prompt strings (or token-id lists) and returns samples.

    ``engine`` holds extra ``vllm.LLM`` keyword arguments (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
    ``enforce_eager``, ...). On CPU the KV cache size comes from ``kv_cache_gib`` (``VLLM_CPU_KVCACHE_SPACE``).
    """

    def __init__(self, model_path: str, engine: dict | None = None, seed: int = 0, kv_cache_gib: int = 1):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process per actor: simpler under Ray
        from vllm import LLM

        self.model_path = model_path
        engine = dict(engine or {})
        engine.setdefault("worker_extension_cls", "workers.vllm_ext.WeightSync")
        self.llm = LLM(model=model_path, seed=seed, **engine)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list, sampling: dict[str, Any]) -> list[list[dict]]:
        """For each prompt, ``sampling['n']`` samples (default 1) of ``{text, token_ids, finish_reason, logprobs}``."""
        from vllm import SamplingParams

        params = SamplingParams(**sampling)
        inputs = [{"prompt_token_ids": list(p)} if not isinstance(p, str) else p for p in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        return [[_sample(c) for c in o.outputs] for o in outs]

    def load_weights(self, blob: bytes) -> int:
        """Replace the engine's weights with a full state dict (safetensors bytes); no restart.

        The prefix cache is reset afterwards, or attention cached under the old weights would be reused.
        """
        n = self.llm.collective_rpc("load_state_bytes", args=(blob,))[0]
        self.llm.reset_prefix_cache()
        return n

    def ping(self) -> str:
        return self.model_path


def _sample(c) -> dict:
    """A vLLM CompletionOutput as plain data; sampled-token log-probs when they were requested."""
    lps = [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)] if c.logprobs else None
    topk = [[lp.logprob for lp in d.values()] for d in c.logprobs] if c.logprobs else None
    return {"text": c.text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason,
            "logprobs": lps, "topk_logprobs": topk, "cumulative_logprob": c.cumulative_logprob}


RolloutWorker = ray.remote(Rollout)
