"""Rollout worker: a Ray actor that holds one vLLM engine and generates responses."""
from __future__ import annotations

import os
import uuid
from typing import Any

import ray

from stepentropy_rl.tokenizer import load_tokenizer


class Rollout:
    """One vLLM engine. ``generate`` takes prompts as token ids and returns samples.

    Prompts are ids, never text: vLLM would tokenize a text prompt again with the tokenizer's BOS added, and a
    chat template that renders its own BOS (R1's) would start every prompt with two. Output text is decoded from
    the sampled ids with the project's checked tokenizer (``tokenizer.load_tokenizer``), so every actor reads the
    same tokenization.

    ``engine`` holds extra ``vllm.LLM`` keyword arguments (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
    ``enforce_eager``, ...). On CPU the KV cache size comes from ``kv_cache_gib`` (``VLLM_CPU_KVCACHE_SPACE``);
    ``log_level`` is vLLM's own (``rollout.log_level``).
    """

    def __init__(self, model_path: str, engine: dict | None = None, seed: int = 0, kv_cache_gib: int = 1,
                 log_level: str = "WARNING"):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        os.environ["VLLM_LOGGING_LEVEL"] = log_level  # read when vllm is first imported, just below
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process per actor: simpler under Ray
        from vllm import LLM

        self.model_path = model_path
        engine = dict(engine or {})
        engine.setdefault("worker_extension_cls", "workers.vllm_ext.WeightSync")
        quiet_rotary_reload_warning()
        self.llm = LLM(model=model_path, seed=seed, **engine)
        self.tokenizer = load_tokenizer(model_path)
        self.incarnation = uuid.uuid4().hex  # a new one when Ray restarts this actor (ping)

    def generate(self, prompts: list[list[int]], sampling: dict[str, Any]) -> list[list[dict]]:
        """For each prompt (token ids), ``sampling['n']`` samples (default 1) of ``{text, token_ids, finish_reason,
        logprobs}``; ``skip_special_tokens`` (default True) applies to ``text``; ``progress`` (board, key) is where
        finished samples are counted for the driver's bar."""
        from vllm import SamplingParams

        if any(isinstance(p, str) or not all(isinstance(t, int) for t in p) for p in prompts):
            raise TypeError("Rollout.generate takes prompts as lists of token ids (tokenizer.prompt_ids), not text")
        from stepentropy_rl.progress_report import vllm_bar

        sampling = dict(sampling)
        progress = sampling.pop("progress", None)  # (board, key): finished samples are reported there
        skip = sampling.get("skip_special_tokens", True)
        # flat log-probs: a few flat lists per sample instead of a dict of objects per token (top-20 log-probs doubled
        # the base evaluation's generation time, 23 s -> 44 s for 500 CoTs of 230 tokens, on 2 cores)
        params = SamplingParams(**{**sampling, "detokenize": False, "flat_logprobs": True})
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params,
                                 use_tqdm=vllm_bar(progress) if progress else False)
        return [[_sample(c, self.tokenizer.decode(_text_ids(c), skip_special_tokens=skip)) for c in o.outputs]
                for o in outs]

    def open_weight_group(self, url: str, rank: int, world_size: int, backend: str, timeout_s: float = 600.0) -> None:
        """Join the weight-sync group of learner rank 0 (``stepentropy_rl.weight_sync``) at ``url`` as ``rank``."""
        self.llm.collective_rpc("open_weight_group", args=(url, rank, world_size, backend, timeout_s))

    def receive_weights(self, plan: list) -> int:
        """Take the policy's weights as learner rank 0 broadcasts them (no restart); returns the tensors loaded.

        The prefix cache is reset afterwards, or attention cached under the old weights would be reused.
        """
        n = self.llm.collective_rpc("receive_weights", args=(plan,))[0]
        self._reset_prefix_cache()
        return n

    def load_weights_from(self, model_dir: str) -> str:
        """Serve the checkpoint in ``model_dir`` (a run directory every node sees), read by the engine itself."""
        self.llm.collective_rpc("load_checkpoint_dir", args=(model_dir,))
        self._reset_prefix_cache()
        return model_dir

    def _reset_prefix_cache(self) -> None:
        """After new weights: vLLM refuses the reset (False, a warning) while a request holds cached blocks, and
        attention cached under the old weights would then be reused; an error instead."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM kept its prefix cache after a weight update (a request still holds blocks): "
                               "its cached attention comes from the old weights")

    def reset_prefix_cache(self) -> bool:
        """Drop the prefix cache: which prompts hit it changes how requests are batched, and so which random numbers
        each draws (``cot_cache``: after writing CoTs, an engine holds the state reading them would give it)."""
        return bool(self.llm.reset_prefix_cache())

    def runtime_tag(self) -> dict:
        """This node's libraries, CPU kernels and GPU (``cot_cache.runtime_tag``): the samples' bits depend on them. The
        GPU's name comes from vLLM's platform (NVML), which opens no CUDA context in this actor (its model runs in
        vLLM's engine process)."""
        from vllm.platforms import current_platform

        from stepentropy_rl.cot_cache import runtime_tag

        try:
            gpu = str(current_platform.get_device_name(0)) if current_platform.is_cuda_alike() else None
        except Exception as e:  # NVML unavailable
            gpu = f"unknown ({type(e).__name__})"
        return runtime_tag(gpu)

    def rng_state(self) -> bytes:
        """The sampler's random state, as ``.npz`` bytes: requests without a seed draw from torch's CPU generator
        (vLLM's CPU sampler), the CUDA generators (its V1 GPU sampler), or numpy's global generator (its V2 GPU model
        runner, vLLM's default on CUDA, draws each request's seed from it)."""
        import io

        import numpy as np
        import torch

        _, keys, pos, has_gauss, gauss = np.random.get_state()
        arrays = {"torch": torch.get_rng_state().numpy(), "numpy_keys": keys,
                  "numpy_rest": np.array([pos, has_gauss, gauss], dtype=np.float64)}
        if torch.cuda.is_available():
            arrays.update({f"cuda{i}": s.numpy() for i, s in enumerate(torch.cuda.get_rng_state_all())})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def set_rng_state(self, state: bytes) -> None:
        """Restore ``rng_state``; the bare torch state that runs saved before the numpy and CUDA ones is read too."""
        import io
        import zipfile

        import numpy as np
        import torch

        if not zipfile.is_zipfile(io.BytesIO(state)):  # not an .npz: an older run's torch state alone
            torch.set_rng_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
            return
        z = np.load(io.BytesIO(state), allow_pickle=False)
        torch.set_rng_state(torch.from_numpy(z["torch"]))
        pos, has_gauss, gauss = z["numpy_rest"].tolist()
        np.random.set_state(("MT19937", z["numpy_keys"], int(pos), int(has_gauss), gauss))
        cuda = sorted((k for k in z.files if k.startswith("cuda")), key=lambda k: int(k[4:]))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.from_numpy(z[k]) for k in cuda])

    def ping(self) -> str:
        """This instance's id: another one after Ray restarted the actor (it then serves ``model_path`` again)."""
        return self.incarnation


def quiet_rotary_reload_warning() -> None:
    """vLLM warns "RotaryEmbedding: Failed to load weights" on every weight reload: the rotary cos/sin cache is a
    buffer no checkpoint holds, and vLLM keeps it, as it should. Only that line is dropped."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record) -> bool:
            return not (record.getMessage() == "RotaryEmbedding: Failed to load weights")

    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_Drop())


def _text_ids(c) -> list[int]:
    """The ids whose text vLLM would return: all but the EOS or stop token that ended the sample (it stays in
    ``token_ids``, where rewards and the learners see it)."""
    ids = list(c.token_ids)
    ended_on_token = c.finish_reason == "stop" and (c.stop_reason is None or isinstance(c.stop_reason, int))
    return ids[:-1] if ended_on_token and ids else ids


def _logprobs(c) -> tuple[list | None, list | None]:
    """Per sampled token its log-prob and its position's top-k log-probs, the sampled token's among them once (as
    vLLM's per-token dicts hold them), read from vLLM's flat log-probs; (None, None) if none were asked for."""
    flat = c.logprobs
    if not flat:
        return None, None
    sampled, topk = [], []
    for token, start, end in zip(c.token_ids, flat.start_indices, flat.end_indices):
        position: dict = {}
        for tid, lp in zip(flat.token_ids[start:end], flat.logprobs[start:end]):
            position.setdefault(tid, lp)
        sampled.append(position[token])
        topk.append(list(position.values()))
    return sampled, topk


def _sample(c, text: str) -> dict:
    """A vLLM CompletionOutput as plain data; sampled-token log-probs when they were requested."""
    lps, topk = _logprobs(c)
    return {"text": text, "token_ids": list(c.token_ids), "finish_reason": c.finish_reason,
            "logprobs": lps, "topk_logprobs": topk, "cumulative_logprob": c.cumulative_logprob}


RolloutWorker = ray.remote(Rollout)
