"""Training metrics on the Ray dashboard: each logged number that shows how a run moves (its step, stage, reward
terms, entropy, thinking tokens, throughput, SFT loss) becomes a ``ray.util.metrics`` Gauge tagged with the run,
which Ray's metrics agent exports for Prometheus and the dashboard's Grafana panels (``stepentropy_<key>``)."""
from __future__ import annotations

import re

EXPORTED = ("step", "phase/stage", "reward/", "policy/entropy", "response/think_tokens", "response/length",
            "perf/", "time/step", "sft/nll", "sft/grad_norm")


def gauge_name(key: str) -> str:
    """``reward/total`` -> ``stepentropy_reward_total`` (Prometheus names: letters, digits, underscores)."""
    return "stepentropy_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class RayGauges:
    """Set from every logged row (``Tracker.log``); a Gauge is made the first time its key is seen."""

    def __init__(self, run: str):
        self.run, self.gauges = run, {}

    def update(self, row: dict) -> None:
        from ray.util.metrics import Gauge

        for key, value in row.items():
            if not key.startswith(EXPORTED) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name = gauge_name(key)
            if name not in self.gauges:
                self.gauges[name] = Gauge(name, description=f"stepentropy_rl {key}", tag_keys=("run",))
            self.gauges[name].set(float(value), tags={"run": self.run})
