"""vLLM worker extension: load a full state dict, sent as safetensors bytes, into a running engine.

Installed with ``LLM(..., worker_extension_cls="workers.vllm_ext.WeightSync")`` and reached through
``llm.collective_rpc("load_state_bytes", args=(blob,))``. Tensors sent through collective_rpc arrive as lists, so the
state dict travels as bytes; the worker's own ``reload_weights`` handles repacking (CPU) and tied weights.
The name avoids ``update_weights``, which the CPU worker already defines.
"""
from __future__ import annotations


class WeightSync:
    def load_state_bytes(self, blob: bytes) -> int:
        from safetensors.torch import load

        state = load(blob)
        self.reload_weights(weights_iterator=iter(state.items()), is_checkpoint_format=True)
        return len(state)
