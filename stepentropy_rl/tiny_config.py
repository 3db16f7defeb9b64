"""The tiny reasoner's config, its cache key and its cached checkpoint: all without importing torch, so that a run
whose model is cached reaches Ray quickly (``bootstrap`` trains one when it is missing)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from stepentropy_rl.files import build_cached, cache_root
from stepentropy_rl.tasks.basket import BasketConfig, generate

FORMAT_VERSION = 4  # bump when the training recipe changes meaning (the task's text is in the key already)
# The recipe measured for each task style (n=500 held out, scripts/bench_bootstrap.py; README): the verbose style's
# sequences are 3x longer, so it trains compiled, with a heavier loss on the essential steps (6x) and the rereads (8x),
# a longer warmup, a few examples read pruned, and six narrower heads: 800 steps that copy every reread and learn the
# names on three seeds of three on an AMD Zen 5 CPU with the LM head in bf16 (1100 steps at 4x did as well in a quarter
# more time; 700 steps named strangers); since 2026-12-06 with the logits in fp32 (fp32_head): on an Intel AMX CPU the
# bf16 head delayed the names past step 800, the fp32 head learned them on three seeds of three, and on two more seeds
# later and in part (docs/measurements_2026_12_06_fp32_head.md; not measured on the Zen 5 CPU); since 2026-12-06
# afternoon with the weights drawn at 3x Llama's scale (init_std 0.06): at 0.02 the loss sat on a plateau near 0.30 to
# step 395-580 and finished its drop late or not at all on some seeds; at 0.06 it left it by step 160 on every seed
# tried. Since 2026-12-07 500 steps, for the default task's two or three people (three or four before, at 800 steps; 500
# steps of that task fell to 94% at T=0.6): README, "Why two or three people and 500 steps".
RECIPES = {"terse": {"steps": 1100, "warmup_steps": 30, "essential_weight": 1.0, "reread_weight": 1.0,
                     "compile": False, "num_heads": 3, "pruned_reading": 0.0, "fp32_head": False, "stable_steps": 0,
                     "init_std": 0.02},
           "verbose": {"steps": 500, "warmup_steps": 100, "essential_weight": 6.0, "reread_weight": 8.0,
                       "compile": True, "num_heads": 6, "pruned_reading": 0.05, "fp32_head": True,
                       "stable_steps": 0, "init_std": 0.06}}
RESOLVED = (*RECIPES["verbose"], "bf16")  # the fields ``TinyConfig.resolved`` fills where they are None
# knobs added to the recipe since models were cached, with the value every recipe had before: a recipe at that value
# hashes as before the knob existed (``TinyConfig.key``), and a bootstrap.json without the knob was trained at it
OFF = {"pruned_reading": 0.0, "compile": False, "reread_weight": 1.0, "fp32_head": False, "stable_steps": 0,
       "init_std": 0.02}
TASK_OFF = {"move_openers": 1, "move_endings": 1, "quantity_first": 0.0, "recap_openers": 1}  # the same, for the task


@dataclass
class TinyConfig:
    """Architecture and training recipe of the tiny reasoner."""

    task: BasketConfig = field(default_factory=BasketConfig)
    seed: int = 0
    vocab_size: int = 512  # BPE target; the embedding is padded to a multiple of 64
    hidden_size: int = 192
    num_layers: int = 4
    num_heads: Optional[int] = None  # None: RECIPES (terse 3, verbose 6); heads of an even size
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    train_examples: int = 40000
    steps: Optional[int] = None  # None: the recipe measured for the task's style (RECIPES)
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: Optional[int] = None  # linear warmup, then cosine decay; None: RECIPES (terse 30, verbose 100),
    # at most a quarter of the steps
    stable_steps: Optional[int] = None  # steps held at the peak lr after the warmup, before the decay (lr_factor);
    # None: RECIPES (0)
    weight_decay: float = 0.01
    init_std: Optional[float] = None  # the weights' initial standard deviation (LlamaConfig.initializer_range);
    # None: RECIPES (terse 0.02, Llama's; verbose 0.06)
    threads: int = 0  # torch threads; 0 = all cores
    bf16: Optional[bool] = None  # bf16 autocast for the forward pass (weights stay fp32); None: fast_bf16()
    essential_weight: Optional[float] = None  # loss weight of essential-step tokens but their first; None: RECIPES
    reread_weight: Optional[float] = None  # the same for the verbose style's rereads (_encode); None: RECIPES
    pruned_reading: Optional[float] = None  # share of examples read pruned, loss on the answer (_encode); None: RECIPES
    compile: Optional[bool] = None  # torch.compile the training forward and backward (inductor); None: RECIPES
    attn_implementation: str = "eager"  # for training; on 2 cores eager beat sdpa's CPU flash kernel by ~20% here
    fp32_head: Optional[bool] = None  # under bf16 autocast, the logits in fp32 (bootstrap.fp32_head); None: RECIPES
    # (verbose on, terse off)

    def __post_init__(self):
        from stepentropy_rl.typed import positive

        positive(self, "vocab_size", "hidden_size", "num_layers", "intermediate_size",
                 "max_position_embeddings", "train_examples", "batch_size", integer=True)
        for count in ("steps", "num_heads"):
            if getattr(self, count) is not None:
                positive(self, count, integer=True)
        for count in ("warmup_steps", "stable_steps"):
            if getattr(self, count) is not None:
                positive(self, count, allow_zero=True, integer=True)
        if self.num_heads is not None:  # messages name keys relative to model.tiny, as from_dict prefixes them
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
            if self.hidden_size // self.num_heads % 2:  # else the first training step fails inside apply_rotary_pos_emb
                raise ValueError(f"hidden_size / num_heads must be even (rotary position embeddings turn pairs of "
                                 f"dimensions), got {self.hidden_size} / {self.num_heads} = "
                                 f"{self.hidden_size // self.num_heads}")
        if self.train_examples < self.batch_size:
            raise ValueError(f"train_examples ({self.train_examples}) must be >= batch_size ({self.batch_size}): a "
                             f"batch draws its rows without repeats")
        for weight in ("essential_weight", "reread_weight"):
            if getattr(self, weight) is not None:
                positive(self, weight)
        if self.pruned_reading is not None and not 0.0 <= self.pruned_reading < 1.0:
            raise ValueError(f"pruned_reading must be in [0, 1), got {self.pruned_reading}")
        if self.fp32_head is not None and not isinstance(self.fp32_head, bool):
            raise ValueError(f"fp32_head must be true, false or null, got {self.fp32_head!r}")
        positive(self, "lr")
        if self.init_std is not None:
            positive(self, "init_std")
        positive(self, "threads", allow_zero=True, integer=True)
        positive(self, "weight_decay", allow_zero=True)

    def resolved(self) -> "TinyConfig":
        """This config with each unset recipe value (None) taken from ``RECIPES`` for the task's style, and bf16
        from ``fast_bf16()`` where unset."""
        recipe = {**RECIPES[self.task.style], "bf16": fast_bf16()}
        out = dataclasses.replace(self, **{k: v for k, v in recipe.items() if getattr(self, k) is None})
        if not out.bf16:  # fp32 training computes the logits in fp32 anyway: the same model (key), recorded as such
            out.fp32_head = False
        if self.warmup_steps is None:  # the recipe's warmup, for a run of fewer steps: at most a quarter of them
            out.warmup_steps = min(out.warmup_steps, out.steps // 4)
        elif out.warmup_steps > out.steps:
            raise ValueError(f"warmup_steps ({out.warmup_steps}) must be <= steps ({out.steps}): the learning rate "
                             f"would never reach lr nor decay")
        if out.warmup_steps + out.stable_steps > out.steps:
            recipe = RECIPES[self.task.style]["warmup_steps"]
            null = "" if self.warmup_steps is not None else f"; null: the {self.task.style} recipe's" + (
                "" if out.warmup_steps == recipe else f" {recipe}, cut to a quarter of the steps")
            raise ValueError(f"stable_steps ({out.stable_steps}) + warmup_steps ({out.warmup_steps}{null}) must be <= "
                             f"steps ({out.steps}): the hold would outlast the run")
        return out

    def key(self) -> str:
        """Hash of the recipe and of sample training text: a change to the task's wording is a new model, even
        where no config value moved."""
        sample = [p.to_row() for p in generate(self.task, 8, self.seed, "train")]
        fields = dataclasses.asdict(self)
        for knob, off in OFF.items():
            if fields[knob] in (off, None):  # a recipe without it hashes as before the knob: caches stay valid
                del fields[knob]
        if fields.get("bf16") is False:  # fp32 training has its logits in fp32 already: the same model either way
            fields.pop("fp32_head", None)
        for knob, off in TASK_OFF.items():
            if fields["task"][knob] == off:
                del fields["task"][knob]
        if fields.get("compile"):  # compiled training runs deterministic kernels since 2026-12-05 (bootstrap.deterministic):
            fields["deterministic"] = True  # another model than the same recipe's before, which each run drew anew
        blob = json.dumps({"v": FORMAT_VERSION, **fields, "sample": sample}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def fast_bf16() -> bool:
    """Whether this CPU has AVX-512 (or AVX512-BF16, AMX), where oneDNN computes bf16 fast. On an AVX2-only CPU it
    falls back to a reference kernel: a bootstrap step of the verbose recipe took 25 s in bf16 against 1.5 s in fp32
    (AMD EPYC, 2 cores). The two precisions train different models, so the resolved value is in the cache key.
    Read from ``/proc/cpuinfo`` where there is one (torch's check costs its 3 s import on every run), else torch."""
    try:
        flags = set(" ".join(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                             if line.startswith("flags")).split())
    except OSError:
        flags = set()
    if flags:
        return "avx512f" in flags  # AVX512-BF16 and AMX come only with it
    import torch

    cpu = torch.cpu
    checks = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def recipe_to_train(recorded: dict, cfg: TinyConfig, name: str) -> Optional[dict]:
    """The ``model.tiny`` values, and the task's as ``task.KNOB`` (``data.task.*``), under which ``cfg`` trains the
    model ``name`` (``tiny-KEY``) whose bootstrap.json recorded ``recorded`` (its ``config``; a knob it lacks was at
    its ``OFF`` or ``TASK_OFF`` value), e.g. ``{'init_std': 0.02, 'task.recap_openers': 1}``; None where no values do
    (the task's wording or the key's format changed since)."""
    now = cfg.resolved()
    want, task = {}, {}
    for f in dataclasses.fields(TinyConfig):
        if f.name == "task" or (f.name not in recorded and f.name not in OFF):
            continue
        then = recorded.get(f.name, OFF.get(f.name))
        if then != getattr(now, f.name):
            want[f.name] = then
    if "bf16" in want:  # resolved() ties the head to bf16: set both
        want["fp32_head"] = recorded.get("fp32_head", OFF["fp32_head"])
    then_task = recorded.get("task") or {}
    for f in dataclasses.fields(BasketConfig):
        if f.name not in then_task and f.name not in TASK_OFF:
            continue
        then, value = then_task.get(f.name, TASK_OFF.get(f.name)), getattr(cfg.task, f.name)
        if (list(then) if isinstance(then, (list, tuple)) else then) != (
                list(value) if isinstance(value, (list, tuple)) else value):
            task[f.name] = then
    if not (want or task):
        return None
    try:
        old = dataclasses.replace(cfg, **want, task=dataclasses.replace(cfg.task, **task))
    except ValueError:  # values this version refuses: no config trains it
        return None
    return {**want, **{f"task.{k}": v for k, v in task.items()}} if tiny_model_path(old).name == name else None


def tiny_model_path(cfg: TinyConfig) -> Path:
    return cache_root() / f"tiny-{cfg.resolved().key()}"


def ensure_tiny_model(cfg: TinyConfig, progress: bool = True) -> Path:
    """Return the cached tiny reasoner for ``cfg``, training it first if it is missing."""
    cfg = cfg.resolved()

    def build(out: Path) -> None:
        from stepentropy_rl.bootstrap import train_tiny_model  # torch and transformers: only to build one
        from stepentropy_rl.heap import freed_memory_kept

        t0 = time.time()
        with freed_memory_kept():
            stats = train_tiny_model(cfg, out, progress=progress)
        stats["bootstrap_s"] = round(time.time() - t0, 1)
        (out / "bootstrap.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), **stats}, indent=1,
                                                       default=list))

    return build_cached(tiny_model_path(cfg), build)
