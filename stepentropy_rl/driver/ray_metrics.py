"""Training metrics on the Ray dashboard: each logged number that shows how a run moves (its step, stage, reward
terms, entropy, thinking tokens, throughput, SFT loss) becomes a ``ray.util.metrics`` Gauge tagged with the run,
which Ray's metrics agent exports for Prometheus and the dashboard's Grafana panels (``ray_stepentropy_<key>``: Ray
puts its ``ray_`` before every application metric)."""
from __future__ import annotations

import re
import threading

EXPORTED = ("step", "phase/stage", "reward/", "policy/entropy", "response/think_tokens", "response/length",
            "perf/", "time/step", "sft/nll", "sft/grad_norm")


def gauge_name(key: str) -> str:
    """``reward/total`` -> ``stepentropy_reward_total`` (Prometheus names: letters, digits, underscores)."""
    return "stepentropy_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class RayGauges:
    """Set from every logged row (``Tracker.log``); a Gauge is made the first time its key is seen. Ray exports a
    gauge's value once and its agent keeps it about two export intervals (20 s), so a step longer than that left the
    panels empty until the next row: a thread sets the last values again every ``every_s`` until :meth:`stop`."""

    def __init__(self, run: str, every_s: float = 5.0):
        self.run, self.gauges, self.last = run, {}, {}
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._keep, args=(every_s,), name="ray-gauges", daemon=True)
        self.thread.start()

    def update(self, row: dict) -> None:
        from ray.util.metrics import Gauge

        with self.lock:
            for key, value in row.items():
                if not key.startswith(EXPORTED) or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                name = gauge_name(key)
                if name not in self.gauges:
                    self.gauges[name] = Gauge(name, description=f"stepentropy_rl {key}", tag_keys=("run",))
                self.last[name] = float(value)
                self.gauges[name].set(self.last[name], tags={"run": self.run})

    def _keep(self, every_s: float) -> None:
        import ray

        while not self.stopped.wait(every_s):
            try:
                with self.lock:
                    if not ray.is_initialized():  # the run's session is over
                        return
                    for name, value in self.last.items():
                        self.gauges[name].set(value, tags={"run": self.run})
            except Exception:  # Ray shut down under it
                return

    def stop(self) -> None:
        """The run is over: its values age out of the dashboard."""
        self.stopped.set()
