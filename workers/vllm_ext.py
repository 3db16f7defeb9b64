"""vLLM worker extension: receive the policy's weights from learner rank 0 over a collective group, in buckets.

Installed with ``LLM(..., worker_extension_cls="workers.vllm_ext.WeightSync")`` and reached through
``llm.collective_rpc``. The received ``(name, tensor)`` views go through the worker's own ``reload_weights``, which
handles repacking (CPU) and tied weights; the complete state dict is streamed, since a partial one would leave
stale weights. See ``stepentropy_rl.weight_sync``.
"""
from __future__ import annotations


class WeightSync:
    def open_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str) -> None:
        from stepentropy_rl.weight_sync import open_group

        self._weight_group = open_group(host, port, rank, world_size, backend)  # replaces a previous group

    def receive_weights(self, plan: list) -> int:
        from stepentropy_rl.weight_sync import receive

        _, group = self._weight_group
        self.reload_weights(weights_iterator=receive(group, plan, self.device), is_checkpoint_format=True)
        return sum(len(entries) for _, _, entries in plan)
