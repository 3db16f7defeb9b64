"""The rollout engines as one: generation split over them with recovery, weight pushes with a version number, and
loading saved weights for evaluation. The group knows what its engines serve, so a restarted engine gets it back.
"""
from __future__ import annotations

import base64
import itertools
import logging
import time

import ray

from stepentropy_rl.driver import progress
from stepentropy_rl.driver.remote import ActorLost, fetch

log = logging.getLogger(__name__)


class WeightBroadcast:
    """The driver's side of weight sync (``weight_sync``): opens the group of learner rank 0 and every engine, plans
    the buckets once, and starts each push on the learners and the engines together. Only the plan (names, shapes)
    passes through the driver. ``reopen`` makes a new group, e.g. after Ray restarted a dead engine."""

    def __init__(self, learners, engines, backend: str, bucket_mb: float, timeout_s: float = 600.0):
        from stepentropy_rl.weight_sync import plan_buckets, plan_bytes

        self.learners, self.engines, self.backend, self.timeout_s = learners, engines, backend, timeout_s
        dtype, specs = learners.weight_specs()
        self.plan = plan_buckets(specs, dtype, bucket_mb)
        self.bytes = plan_bytes(self.plan)
        self.open = False

    def reopen(self) -> None:
        world = 1 + len(self.engines)
        url, hosting = self.learners.open_weight_group(world, self.backend, self.timeout_s)
        fetch([hosting] + [w.open_weight_group.remote(url, i + 1, world, self.backend, self.timeout_s)
                           for i, w in enumerate(self.engines)])
        self.open = True

    def push(self) -> int:
        """Push the learners' current weights into every engine; returns the bytes sent."""
        if not self.open:
            self.reopen()
        try:
            return fetch(self.learners.push_weights(self.plan) + [w.receive_weights.remote(self.plan)
                                                                   for w in self.engines])[0]
        except ray.exceptions.RayActorError as e:
            raise self.learners.lost(e, "a weight push") from e


class RolloutGroup:
    """``engines``: rollout actors started from ``model_path`` (``roles.spawn_rollouts``), restartable by Ray.

    ``serving`` says what every engine holds: a model directory, or ``policy@<version>`` once the learners pushed
    weights (``version`` counts pushes). An engine that died mid-request is restarted by Ray with ``model_path``;
    the group waits for it, gives it ``serving`` again, and retries its share. One that died between calls raises
    nothing (the next call reaches the new instance, serving ``model_path``): the group tells it by its
    incarnation (``Rollout.ping``), checked after each generation and before each weight push.
    """

    def __init__(self, engines: list, model_path: str, retries: int = 2, restart_timeout_s: float = 600.0):
        if not engines:
            raise ValueError("a rollout group needs at least one engine")
        self.engines, self.spawned_from = list(engines), str(model_path)
        self.serving, self.version = str(model_path), 0
        self.retries, self.restart_timeout_s = retries, restart_timeout_s
        self.sync: WeightBroadcast | None = None
        self._calls = itertools.count()  # names each generate's progress counters
        self._served: list | None = None  # each engine's incarnation when it last got what the group serves
        self._grouped: list | None = None  # ... when it last joined the weight-sync group
        self._rng: list | None = None  # each engine's sampler state as the last generate left it (raw bytes)

    def _incarnations(self) -> list:
        """Each engine's ``ping``; an engine Ray is still restarting is waited for."""
        try:
            return fetch([w.ping.remote() for w in self.engines])
        except (ray.exceptions.ActorUnavailableError, ray.exceptions.ActorDiedError):  # restarting, or dead for good
            wait_alive(self.engines, self.restart_timeout_s)
            return fetch([w.ping.remote() for w in self.engines])

    def _restarted(self) -> list[int]:
        """The engines whose incarnation changed since the group last gave them what it serves."""
        now = self._incarnations()
        if self._served is None:
            self._served = now
        return [i for i, (was, is_) in enumerate(zip(self._served, now)) if was != is_]

    # ---- generation ----------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], sampling: dict) -> list[list[dict]]:
        """Per prompt (token ids), the engines' samples (``Rollout.generate``), in the input order. Prompts are dealt
        round-robin over the engines; a share whose engine died is retried up to ``retries`` times."""
        n = len(self.engines)
        shares = [prompts[i::n] for i in range(n)]
        results: list = [None] * n
        board, call = progress.board(), next(self._calls)
        if self._served is None:  # the group's first call: which engines it finds, or a restart in this call would
            self._served = self._incarnations()  # pass for the engine that was there, and redo from its own state
        if self._rng is None:
            self._rng = fetch([w.rng_state.remote() for w in self.engines])
        for attempt in range(self.retries + 1):
            asked = {i: {**sampling, "progress": (board, f"gen{call}.{attempt}/{i}")} if board else sampling
                     for i in range(n)}
            pending = {i: self.engines[i].generate.remote(shares[i], asked[i]) for i in range(n)
                       if results[i] is None and shares[i]}
            progress.wait(list(pending.values()), [asked[i]["progress"][1] for i in pending] if board else [],
                          "generating", sum(len(shares[i]) for i in pending) * int(sampling.get("n", 1)), "sample")
            failed = []
            for i, ref in pending.items():
                try:
                    results[i] = fetch(ref)
                except ray.exceptions.RayActorError as e:
                    log.warning("rollout engine %d died (%s); retrying its share (attempt %d)", i, type(e).__name__,
                                attempt + 1)
                    failed.append(i)
            wait_alive([self.engines[i] for i in failed], self.restart_timeout_s)
            for i in self._restarted():
                if i not in failed:
                    log.warning("rollout engine %d was restarted between calls: its share came from %s, not %s; "
                                "retrying it (attempt %d)", i, self.spawned_from, self.serving, attempt + 1)
                    failed.append(i)
                results[i] = None
            if not failed:
                break
            if attempt == self.retries:
                raise ActorLost(f"rollout engines {sorted(failed)} kept failing after {self.retries} retries")
            self._restore([self.engines[i] for i in failed])  # the retried shares sample from the state before the call
            # an engine that failed without a restart (a connection lost) may have drawn for its share already
            fetch([self.engines[i].set_rng_state.remote(self._rng[i]) for i in failed])
        self._rng = fetch([w.rng_state.remote() for w in self.engines])
        out: list = [None] * len(prompts)
        for i, res in enumerate(results):
            for j, r in enumerate(res or []):
                out[i + j * n] = r
        return out

    def _restore(self, restarted: list) -> None:
        """Give engines that Ray restarted (they serve ``spawned_from``) what the group serves."""
        if self.serving.startswith("policy@"):
            self.sync.reopen()  # the old group lost a member: every engine joins a new one
            self.sync.push()
        elif self.serving != self.spawned_from:
            fetch([w.load_weights_from.remote(self.serving) for w in restarted])
        self._mark_served(self._incarnations())
        if self.serving.startswith("policy@"):
            self._grouped = self._served

    def _mark_served(self, now: list) -> None:
        """Record that every engine has what the group serves; one found restarted (by a generation, a push or a
        load, whichever came first) also gets back the sampler state the group last saw it in, so its next samples
        are those an uninterrupted run draws."""
        was, self._served = self._served, now
        if was is not None and self._rng is not None:
            fetch([self.engines[i].set_rng_state.remote(self._rng[i]) for i, (a, b) in enumerate(zip(was, now))
                   if a != b])

    # ---- weights -------------------------------------------------------------------------------------------------
    def attach_learners(self, learners, backend: str, bucket_mb: float, timeout_s: float = 600.0) -> None:
        """Weight pushes come from ``learners`` (``LearnerGroup``) over a ``backend`` group in ``bucket_mb`` buckets;
        a member that does not answer within ``timeout_s`` fails the push."""
        self.sync = WeightBroadcast(learners, self.engines, backend, bucket_mb, timeout_s)

    def push_weights(self) -> dict:
        """Stream the learners' current policy into every engine: ``{bytes, seconds, version}``.

        An engine restarted since the last push, or dying during this one, makes every engine join a new group and
        the push start again (up to ``retries`` times; the learner ranks finish a failed push together,
        ``weight_sync.send``). That is gloo's case, where the broadcast raises (the surviving engines wait out the
        group's timeout, ``cluster.learner.sync_timeout_s``, first); NCCL's watchdog instead ends the learner at the
        timeout: the run stops, and a rerun resumes from the last checkpoint."""
        if self.sync is None:
            raise RuntimeError("attach_learners before pushing weights")
        t = time.time()
        now = self._incarnations()
        reopen = self.sync.open and self._grouped not in (None, now)  # a member is gone: every engine joins anew
        for attempt in range(self.retries + 1):
            if reopen:
                log.warning("rollout engines %s were restarted; reopening the weight-sync group",
                            [i for i, (was, is_) in enumerate(zip(self._grouped or now, now)) if was != is_])
                self.sync.reopen()
            try:
                sent = self.sync.push()
                break
            except ActorLost:
                raise
            except Exception as e:
                before, now = now, self._incarnations()  # waits for an engine Ray is restarting
                if attempt == self.retries or now == before:
                    raise
                log.warning("a rollout engine died during the weight push (%s); pushing again to a new group "
                            "(attempt %d)", type(e).__name__, attempt + 1)
                self._grouped, reopen = before, True
        self._mark_served(now)
        self._grouped = now
        self.version += 1
        self.serving = f"policy@{self.version}"
        return {"bytes": sent, "seconds": time.time() - t, "version": self.version}

    def serve(self, model_dir: str) -> None:
        """Every engine serves the checkpoint in ``model_dir`` (a directory every node sees), unless it already does."""
        if self.serving != str(model_dir) or self._restarted():
            fetch([w.load_weights_from.remote(str(model_dir)) for w in self.engines])
            self.serving = str(model_dir)
            self._mark_served(self._incarnations())

    def reset_prefix_cache(self) -> None:
        """Every engine drops its prefix cache (``Rollout.reset_prefix_cache``)."""
        fetch([w.reset_prefix_cache.remote() for w in self.engines])

    # ---- random state -------------------------------------------------------------------------------------------
    def runtime_tags(self) -> list[dict]:
        """Each engine's ``cot_cache.runtime_tag``, as its own node reports it."""
        return fetch([w.runtime_tag.remote() for w in self.engines])

    def rng_states(self) -> list[str]:
        """Each engine's sampler state (base64), saved with every checkpoint and stage marker: a rerun after a crash
        restores it (``set_rng_states``) and samples what the uninterrupted run would have. The group's record where
        it has one: an engine that Ray restarted since the group's last call reports a fresh seed's state, and gets
        the recorded one back at the group's next call (``_mark_served``)."""
        states = self._rng if self._rng is not None else fetch([w.rng_state.remote() for w in self.engines])
        return [base64.b64encode(s).decode() for s in states]

    def set_rng_states(self, states: list[str] | None) -> bool:
        """Restore ``rng_states``; False (and nothing changed) when there are none or the engine count differs."""
        if not states:
            return False
        if len(states) != len(self.engines):
            log.warning("not restoring the engines' random state: saved for %d engines, %d now; sampling differs "
                        "from an uninterrupted run", len(states), len(self.engines))
            return False
        self._rng = [base64.b64decode(s) for s in states]
        fetch([w.set_rng_state.remote(r) for w, r in zip(self.engines, self._rng)])
        return True

    def kill(self, index: int = 0) -> None:
        """Kill engine ``index`` as a crash would (Ray restarts it); for fault injection."""
        ray.kill(self.engines[index], no_restart=False)


def wait_alive(actors, timeout_s: float = 600.0) -> None:
    """Block until every (restarting) actor answers ``ping``; an engine restart takes tens of seconds. ``ActorLost``
    when one is dead for good (its restarts used up, or its start failing each time) or not back in time."""
    deadline = time.time() + timeout_s
    for w in actors:
        while True:
            try:
                ray.get(w.ping.remote(), timeout=max(1.0, deadline - time.time()))
                break
            except ray.exceptions.ActorDiedError as e:
                raise ActorLost(f"a rollout engine died and could not be restarted (cluster.rollout.max_restarts "
                                f"used up, or its start fails): {str(e).splitlines()[0]}") from None
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                if time.time() > deadline:
                    raise ActorLost(f"a rollout engine did not come back within {timeout_s:.0f} s") from None
                time.sleep(1.0)
