"""Entropy-phase controller: when to compress, when to explore.

arXiv 2511.14258 (Entropy-Guided Reasoning Compression) trains in two stages: a compression stage
during which policy entropy *descends* (shorter chains, less exploration) and an exploration stage
during which it *ascends* (accuracy pressure, higher temperature, robustness under the compact mode).
The paper runs them once, in that order (``mode="fixed"``). ``mode="entropy"`` instead alternates
the stages from the measured trend of the per-step mean policy entropy:

* the *trend* is the least-squares slope (nats/step) of the last ``window`` per-step entropies **of the
  current phase** (the window is cleared at a switch, so a trend never straddles two stages; it is
  ``None`` until ``window`` points of the phase exist). Each stage samples at its own temperature and
  the entropy is that of the sampling distribution, so the measured level jumps at a switch. The fit
  is on the raw values: the fit itself smooths, and an EMA before it lags: restarted at a phase's first
  value, an EMA of 0.8 showed a linear trend's first decisions 35-48% of its slope, so a stage still
  moving at twice ``hysteresis`` was judged stalled. The EMA (``ema``: weight of the old value,
  restarted at a switch) is the logged level, ``phase/entropy_ema``;
* a step *opposes* the stage according to ``switch_on``; a switch happens once the phase has lasted
  ``min_steps`` steps and the last ``patience`` steps in a row opposed it.

``switch_on="stall"`` (default) -- switch when the stage's own direction stalls:
  COMPRESS opposes when ``trend >= -hysteresis`` (entropy no longer falls by at least ``hysteresis``
  nats/step), EXPLORE opposes when ``trend <= +hysteresis`` (entropy no longer rises).
``switch_on="reverse"`` -- switch only when entropy moves the wrong way:
  COMPRESS opposes when ``trend > +hysteresis``, EXPLORE when ``trend < -hysteresis``; a flat
  series without noise never switches (with noise it can: a ``window``-step slope of noise sd s has
  the error s / sqrt(sum (i - mean)^2), s / sqrt(5) for 4 steps).

Why stall is the default: each stage exists to move entropy in its direction, so once it stops
doing that its job is done. The paper's failure mode is the *entropy conflict*: compression pushes
entropy down and accuracy pushes it up until the model "gets stuck in a local dilemma", i.e. a
plateau. Under the reversal rule a plateau never triggers a switch (the run can sit in the dilemma
forever) and a switch comes only after accuracy pressure has already won. The price: on a long
plateau the stall rule alternates every ``max(min_steps, window + patience - 1)`` steps, trying the
other stage each time; raise ``min_steps`` to make those visits longer. Under the stall rule
``hysteresis`` is the minimum useful progress rate; in the reversal rule it is a noise dead band.
Measured (``scripts/controller_noise.py``): the tiny reasoners' GRPO entropy moves 0.003-0.005 nats
from step to step about its trend, so a 4-step slope's error (0.45 of that: 0.0013-0.0022) is about the
default hysteresis and the default schedule is a 5-step alternation whose longer phases noise alone
nearly explains. Nor is there a trend the hysteresis can see: a compress-only or explore-only run's
entropy moves at most 0.0007 nats/step over its 40 steps (README, "The controller claim", and the
defaults before it in docs/); its level is the stage's temperature.

``mode="compress"`` / ``"explore"`` stay in one stage; ``start`` applies to ``mode="entropy"`` only
(``"fixed"`` always compresses first, for ``fixed_compress_steps`` steps).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

COMPRESS = "compress"
EXPLORE = "explore"
STAGES = (COMPRESS, EXPLORE)
MODES = ("entropy", "fixed", COMPRESS, EXPLORE)
SWITCH_RULES = ("stall", "reverse")


@dataclass
class PhaseConfig:
    mode: str = "entropy"
    start: str = COMPRESS
    ema: float = 0.8
    window: int = 4
    hysteresis: float = 0.002
    min_steps: int = 4
    patience: int = 2
    fixed_compress_steps: int = 10
    switch_on: str = "stall"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first impossible key."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        need(self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}")
        need(self.start in STAGES, f"start must be one of {STAGES}, got {self.start!r}")
        need(self.switch_on in SWITCH_RULES, f"switch_on must be one of {SWITCH_RULES}, got {self.switch_on!r}")
        need(_is_num(self.ema) and 0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema!r}")
        need(_is_int(self.window) and self.window >= 2, f"window must be an integer >= 2, got {self.window!r}")
        need(_is_num(self.hysteresis) and 0.0 <= self.hysteresis < math.inf,
             f"hysteresis must be a finite number >= 0, got {self.hysteresis!r}")
        need(_is_int(self.min_steps) and self.min_steps >= 1, f"min_steps must be an integer >= 1, got {self.min_steps!r}")
        need(_is_int(self.patience) and self.patience >= 1, f"patience must be an integer >= 1, got {self.patience!r}")
        need(_is_int(self.fixed_compress_steps) and self.fixed_compress_steps >= 0,
             f"fixed_compress_steps must be an integer >= 0, got {self.fixed_compress_steps!r}")


def stages_reached(cfg: PhaseConfig, steps: int) -> list[str]:
    """The stages that a run of ``steps`` GRPO steps can train in, in order. ``fixed`` switches after
    ``fixed_compress_steps``; ``entropy`` no earlier than after step max(min_steps, window + patience - 1): the trend
    needs ``window`` entropies of the phase, then ``patience`` that oppose the stage.

    >>> stages_reached(PhaseConfig(mode="fixed", fixed_compress_steps=10), 8)
    ['compress']
    >>> stages_reached(PhaseConfig(mode="entropy"), 6), stages_reached(PhaseConfig(mode="entropy"), 5)
    (['compress', 'explore'], ['compress'])
    """
    if cfg.mode in STAGES:
        return [cfg.mode]
    if cfg.mode == "fixed":
        return [s for s, n in ((COMPRESS, cfg.fixed_compress_steps), (EXPLORE, steps - cfg.fixed_compress_steps))
                if n > 0]
    other = EXPLORE if cfg.start == COMPRESS else COMPRESS
    return [cfg.start] + ([other] if max(cfg.min_steps, cfg.window + cfg.patience - 1) < steps else [])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0, 1, ..., len-1."""
    n = len(ys)
    xm, ym = (n - 1) / 2.0, sum(ys) / n
    return sum((i - xm) * (y - ym) for i, y in enumerate(ys)) / sum((i - xm) ** 2 for i in range(n))


class PhaseController:
    """Feed it each step's mean policy entropy; it answers which stage the next step uses."""

    def __init__(self, cfg: PhaseConfig | None = None):
        self.cfg = cfg if cfg is not None else PhaseConfig()
        self.cfg.validate()
        mode = self.cfg.mode
        self._stage = self.cfg.start if mode == "entropy" else mode if mode in STAGES else (
            COMPRESS if self.cfg.fixed_compress_steps > 0 else EXPLORE)
        self._steps_in_phase = self._streak = self._switches = 0
        self._ema: float | None = None
        self._recent: list[float] = []  # entropies of the current phase, at most `window`
        self._last_step = -1
        self.history: list[dict] = []  # one record per update: step, entropy, ema, trend, stage used
        self._step_log: dict = {}

    @property
    def stage(self) -> str:
        return self._stage

    @property
    def steps_in_phase(self) -> int:
        return self._steps_in_phase

    @property
    def switches(self) -> int:
        return self._switches

    @property
    def entropy_ema(self) -> float | None:
        return self._ema

    @property
    def trend(self) -> float | None:
        return slope(self._recent) if len(self._recent) >= self.cfg.window else None

    def _opposes(self, trend: float | None) -> bool:
        if trend is None:
            return False
        h, rule = self.cfg.hysteresis, self.cfg.switch_on
        if self._stage == COMPRESS:
            return trend >= -h if rule == "stall" else trend > h
        return trend <= h if rule == "stall" else trend < -h

    def update(self, mean_entropy: float, step: int | None = None) -> str:
        """Record the entropy measured on a step run in ``stage``; return the stage for the next step."""
        try:
            x = float(mean_entropy)
        except (TypeError, ValueError):
            raise ValueError(f"phase controller: mean entropy must be a number, got {mean_entropy!r}") from None
        if not math.isfinite(x):
            raise ValueError(f"phase controller: mean entropy must be finite, got {x} at step "
                             f"{self._last_step + 1 if step is None else step} (state left unchanged)")
        step = self._last_step + 1 if step is None else int(step)
        a = self.cfg.ema
        self._ema = x if self._ema is None else a * self._ema + (1.0 - a) * x
        self._recent = (self._recent + [x])[-self.cfg.window:]
        self._steps_in_phase += 1
        self._last_step = step
        trend = self.trend
        self.history.append({"step": step, "entropy": x, "ema": self._ema, "trend": trend, "stage": self._stage})
        self._step_log = self.log_dict()  # what this step saw, before a switch restarts the EMA and the trend

        mode = self.cfg.mode
        if mode == "fixed":
            nxt = COMPRESS if step + 1 < self.cfg.fixed_compress_steps else EXPLORE
        elif mode == "entropy":
            self._streak = self._streak + 1 if self._opposes(trend) else 0
            switch = self._steps_in_phase >= self.cfg.min_steps and self._streak >= self.cfg.patience
            nxt = (EXPLORE if self._stage == COMPRESS else COMPRESS) if switch else self._stage
        else:
            nxt = self._stage
        if nxt != self._stage:
            self._stage, self._steps_in_phase, self._streak = nxt, 0, 0
            self._recent, self._ema = [], None  # the next stage's level is its own (its own temperature)
            self._switches += 1
        self._step_log.update({"phase/switches": self._switches, "phase/next_stage": STAGES.index(self._stage)})
        return self._stage

    def step_log(self) -> dict:
        """The last update's scalars for the metrics log: the stage it ran, the EMA, trend and phase length it saw
        (a switch restarts them, so ``log_dict`` after it shows the new phase's empty state, not what decided it),
        the switches so far and ``phase/next_stage``. Empty before any update."""
        return dict(self._step_log)

    def log_dict(self) -> dict:
        """Scalars for the metrics log (``nan`` where not yet defined)."""
        trend = self.trend
        return {"phase/stage": STAGES.index(self._stage),
                "phase/entropy_ema": math.nan if self._ema is None else self._ema,
                "phase/trend": math.nan if trend is None else trend,
                "phase/steps_in_phase": self._steps_in_phase,
                "phase/switches": self._switches}

    _STATE = ("_stage", "_steps_in_phase", "_streak", "_switches", "_ema", "_recent", "_last_step")

    def state_dict(self) -> dict:
        """JSON-serialisable snapshot (plain floats/ints/strs/lists) of everything that drives decisions."""
        d = {k.lstrip("_"): getattr(self, k) for k in self._STATE}
        d["recent"] = list(self._recent)
        d["recent_of"] = "entropy"  # before 2026-12-05 the window held EMA values
        d["history"] = [dict(h) for h in self.history]
        d["config"] = asdict(self.cfg)  # for the record; load_state_dict keeps the controller's own config
        return d

    def load_state_dict(self, d: dict) -> None:
        """Restore a ``state_dict``; the config is the controller's own (validate it matches your run)."""
        missing = [k.lstrip("_") for k in self._STATE if k.lstrip("_") not in d]
        if missing:
            raise ValueError(f"phase controller state is missing {missing}")
        if d["stage"] not in STAGES:
            raise ValueError(f"phase controller state has unknown stage {d['stage']!r}")
        self._stage = str(d["stage"])
        self._steps_in_phase, self._streak = int(d["steps_in_phase"]), int(d["streak"])
        self._switches, self._last_step = int(d["switches"]), int(d["last_step"])
        self._ema = None if d["ema"] is None else float(d["ema"])
        # a state saved when the window held EMA values starts its window afresh: one fit over both would mix them
        self._recent = [float(v) for v in d["recent"]][-self.cfg.window:] if d.get("recent_of") == "entropy" else []
        self.history = [dict(h) for h in d.get("history", [])]
