"""vLLM worker extension: receive the policy's weights from learner rank 0 over a collective group, in buckets.

Installed with ``LLM(..., worker_extension_cls="workers.vllm_ext.WeightSync")`` and reached through
``llm.collective_rpc``. The received ``(name, tensor)`` views go through the worker's own ``reload_weights``, which
handles repacking (CPU) and tied weights; the complete state dict is streamed, since a partial one would leave
stale weights. See ``stepentropy_rl.weight_sync``. ``load_checkpoint_dir`` streams a saved checkpoint the same way
(vLLM's own reload from a path skips a tied ``lm_head`` that the files do not hold, leaving the old one).
"""
from __future__ import annotations


class WeightSync:
    def open_weight_group(self, url: str, rank: int, world_size: int, backend: str, timeout_s: float = 600.0) -> None:
        from stepentropy_rl.weight_sync import reopen_group

        self._weight_group = reopen_group(getattr(self, "_weight_group", None), url, rank, world_size, backend,
                                          timeout_s)

    def receive_weights(self, plan: list) -> int:
        from stepentropy_rl.weight_sync import receive

        _, group = self._weight_group
        self.reload_weights(weights_iterator=receive(group, plan, self.device), is_checkpoint_format=True)
        return sum(len(entries) for _, _, entries in plan)

    def load_checkpoint_dir(self, path: str) -> int:
        """Load the safetensors checkpoint in ``path`` tensor by tensor; a tied ``lm_head`` gets the embedding."""
        from pathlib import Path

        from safetensors import safe_open

        files = sorted(Path(path).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors checkpoint")

        loaded = []

        def tensors():
            for f in files:
                with safe_open(str(f), "pt") as sf:
                    for name in sf.keys():
                        loaded.append(name)
                        yield name, sf.get_tensor(name)
            if "lm_head.weight" not in loaded and getattr(self.model_config.hf_config, "tie_word_embeddings", False):
                for f in files:
                    with safe_open(str(f), "pt") as sf:
                        if "model.embed_tokens.weight" in sf.keys():
                            loaded.append("lm_head.weight")
                            yield "lm_head.weight", sf.get_tensor("model.embed_tokens.weight")

        self.reload_weights(weights_iterator=tensors(), is_checkpoint_format=True)
        return len(loaded)
