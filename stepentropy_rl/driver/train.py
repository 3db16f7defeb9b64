"""The training pipeline: init -> eval base -> prune -> SFT -> eval SFT -> GRPO -> eval final -> report.

Each stage writes its outputs into the run directory and a marker when complete; rerunning the same command skips
finished stages and resumes GRPO from its last checkpoint.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import ray

from stepentropy_rl.cot_format import SKIP_TOKEN, THINK_CLOSE
from stepentropy_rl.config import ConfigError, JobConfig
from stepentropy_rl.cot_cache import model_fingerprint
from stepentropy_rl.data import write_jsonl
from stepentropy_rl.driver import register_pipeline
from stepentropy_rl.driver.faults import FaultInjection, die_at
from stepentropy_rl.driver.stage_config import ORDER
from stepentropy_rl.files import atomic_dir, atomic_write_json
from stepentropy_rl.pruning import add_skip_token
from stepentropy_rl.tiny_config import RESOLVED, recipe_to_train, tiny_model_path
from stepentropy_rl.tokenizer import load_tokenizer

log = logging.getLogger(__name__)


class Stages:
    """Stage markers; each records ``seconds``, the wall time since the previous mark in this process (or since the
    markers were opened), so a stage's time includes starting the actors it waited for, plus what ``carry`` added
    (a resumed GRPO: its time up to the checkpoint it resumed from), and ``config``, the job's config in
    ``stage_config.decisive`` form (a rerun under another config is checked against it)."""

    def __init__(self, run_dir: Path, config: dict | None = None):
        self.dir = run_dir / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._since = time.monotonic()
        self.config = config

    def done(self, name: str) -> bool:
        return (self.dir / f"{name}.done").exists()

    def mark(self, name: str, info: dict | None = None) -> None:
        now = time.monotonic()
        extra = {"config": self.config} if self.config is not None else {}
        atomic_write_json(self.dir / f"{name}.done", {**(info or {}), **extra, "seconds": round(now - self._since, 1)},
                          indent=None)
        self._since = now

    def elapsed(self) -> float:
        """Seconds the stage now running has taken so far (what its ``mark`` would record)."""
        return round(time.monotonic() - self._since, 1)

    def carry(self, seconds: float) -> None:
        """Count ``seconds`` spent on the stage now running in an earlier run (up to its last checkpoint)."""
        self._since -= seconds

    def seconds(self) -> dict:
        """Wall seconds of each finished stage, as recorded when it ran (pipeline order)."""
        return {name: self.info(name)["seconds"] for name in ORDER if "seconds" in self.info(name)}

    def info(self, name: str) -> dict:
        """What ``mark`` recorded for a finished stage ({} if it is not done)."""
        path = self.dir / f"{name}.done"
        return json.loads(path.read_text()) if path.exists() else {}

    def latest(self, key: str):
        """``key`` as the last finished stage that recorded it (in pipeline order) left it, or None."""
        return next((info[key] for info in map(self.info, reversed(ORDER)) if key in info), None)


def check_config(run_dir: Path, config: dict) -> None:
    """Refuse a rerun of ``run_dir`` whose ``config`` (``stage_inputs``) differs from the one a finished stage
    ran under in a key that stage depends on (``stage_config``): its outputs would be kept and reported under the new
    config."""
    from stepentropy_rl.driver.stage_config import conflicts

    stages = Stages(run_dir)
    gap = next((name for name in ORDER if not stages.done(name)), None)
    after = [name for name in ORDER[ORDER.index(gap) + 1:] if stages.done(name)] if gap else []
    if after:  # a marker deleted alone: the stages after it are of the outputs this job makes anew
        also = f" (and move {run_dir / 'grpo'} aside: its checkpoints resume the old GRPO)" \
            if (run_dir / "grpo").exists() and ORDER.index(gap) <= ORDER.index("grpo") else ""
        raise ConfigError(f"{run_dir}: stages/{gap}.done is gone but {', '.join(f'{n}.done' for n in after)} "
                          f"remain: they are of the {gap!r} outputs this job makes anew, and would be kept and "
                          f"reported beside them. Delete those markers too to redo the stages after it{also}, or "
                          f"put stages/{gap}.done back to resume as it was")
    recorded = {name: stages.info(name).get("config") for name in ORDER if stages.done(name)}
    found = conflicts({k: v for k, v in recorded.items() if v is not None}, run_config(config))
    if found:
        # the earliest finished stage a changed key decides; a key the stage ran with before one it lacked
        stage, key, then, now = min(found, key=lambda f: (ORDER.index(f[0]), f[2] == UNSET))
        others = len({k for _, k, _, _ in found}) - 1
        more = f" (and {others} more changed key{'s' * (others > 1)})" if others else ""
        grpo = run_dir / "grpo"
        markers = run_dir / "stages"
        if (stage, key) == ("grpo", "trainer.grpo.steps") and isinstance(then, int) and isinstance(now, int) \
                and now > then and not others:  # train on: the checkpoints are the run's own
            redo = (f"delete {markers}/grpo.done and {markers}/eval_final.done to train on from its last "
                    f"checkpoint")
        else:
            also = f" (and move {grpo} aside: its checkpoints resume the old GRPO)" \
                if grpo.exists() and ORDER.index(stage) <= ORDER.index("grpo") else ""
            redo = f"delete {markers}/{stage}.done and the markers after it to redo those stages{also}"
        lacked = " (if this job has it by default, the run began before the key existed: give it another " \
                  "run_dir)" if then == UNSET else ""
        raise ConfigError(f"{run_dir} finished its stage {stage!r} with {key}={then!r}, and this job says "
                          f"{key}={now!r}{more}: a finished stage is not redone, so its outputs would be reported "
                          f"under this config. Rerun with {rerun_with(key, then, now)}{lacked}"
                          f"{' (and the others as they were)' * bool(others)} to resume it, give the job another "
                          f"run_dir, or {redo}")
    check_grpo_checkpoints(run_dir, stages, run_config(config))


def override_value(value) -> str:
    """``value`` as a Hydra command-line override writes it.

    >>> [override_value(v) for v in (None, True, 0.8, "entropy", [1, 2])]
    ['null', 'true', '0.8', "'entropy'", '[1, 2]']
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return repr(value) if isinstance(value, str) else json.dumps(value) if isinstance(value, list) else str(value)


UNSET = "(unset)"  # stage_config.conflicts: the side that lacks the key


def rerun_with(key: str, then, now) -> str:
    """The command-line override that gives ``key`` back the value ``then`` a finished stage ran with (``UNSET``: a
    key that stage did not have is removed; one this job lacks is added).

    >>> rerun_with("a.b", 0.8, 0.4), rerun_with("a.b", None, 1), rerun_with("a.c", 1, UNSET), rerun_with("a.d", UNSET, 2)
    ('a.b=0.8', 'a.b=null', '++a.c=1', '~a.d')
    """
    if then == UNSET:
        return f"~{key}"
    return f"{'++' * (now == UNSET)}{key}={override_value(then)}"


def check_grpo_checkpoints(run_dir: Path, stages: "Stages", current: dict) -> None:
    """Refuse to resume GRPO checkpoints that another GRPO wrote: one from an SFT model this job trains again (its
    marker deleted), or one under another config (``grpo/config.json``, from GRPO's start; raising
    ``trainer.grpo.steps`` to train on is allowed, and so is another ``trainer.grpo.lr``: the learners take it after
    the checkpoint's optimizer state, so a run that diverged goes on at a lower one). Resumed, they would continue the
    old run under the new config."""
    from stepentropy_rl.driver.stage_config import conflicts

    grpo = run_dir / "grpo"
    latest = grpo / "latest"
    if stages.done("grpo") or not latest.exists():
        return
    aside = f"move {grpo} aside (e.g. mv {grpo} {grpo}.old) to start GRPO afresh"
    if not stages.done("sft"):
        raise ConfigError(f"{grpo} holds checkpoints of a GRPO run started from the SFT model that this job trains "
                          f"again (stages/sft.done is gone): resumed, they would replace it with the old policy; "
                          f"{aside}")
    started = grpo / "config.json"
    if not started.exists():  # GRPO started before it recorded its config
        return
    changed = conflicts({"grpo": json.loads(started.read_text())}, current)
    found = [(k, a, b) for _, k, a, b in changed if k not in ("trainer.grpo.steps", "trainer.grpo.lr")]
    if found:
        key, then, now = min(found, key=lambda f: f[1] == UNSET)
        raise ConfigError(f"{grpo} holds checkpoints of a GRPO run with {key}={then!r}, and this job says "
                          f"{key}={now!r}: resumed, they would continue that run under this config. Rerun with "
                          f"{rerun_with(key, then, now)} to resume it, or {aside}")
    done = int(latest.read_text().strip().removeprefix("step_") or 0)
    steps = current.get("trainer.grpo.steps")
    if isinstance(steps, int) and steps < done:
        raise ConfigError(f"{grpo} has {done} GRPO steps done and this job says trainer.grpo.steps={steps}: rerun "
                          f"with at least {done}, or {aside}")
    lr = [(a, b) for _, k, a, b in changed if k == "trainer.grpo.lr"]
    try:  # the rate the latest checkpoint's step ran at (recorded since 2026-12-07): a resume may have changed it
        ran = json.loads((grpo / latest.read_text().strip() / "driver.json").read_text()).get("lr")
    except (OSError, ValueError, AttributeError):
        ran = None
    if ran is not None:
        now = current.get("trainer.grpo.lr")
        lr = [(ran, now)] if ran != now else []
    if lr and isinstance(steps, int) and steps <= done:  # no step left to take at the new rate: the old model would
        raise ConfigError(f"{grpo} has all {done} GRPO steps done at trainer.grpo.lr={lr[0][0]!r}, and this job says "
                          f"{lr[0][1]!r}: no step would run at it, and the model would be recorded under it. Rerun with "
                          f"{rerun_with('trainer.grpo.lr', lr[0][0], lr[0][1])} to finish that run, or more "
                          f"trainer.grpo.steps to go on at the new rate, or {aside}")
    if lr:
        log.warning("GRPO resumes from %s under trainer.grpo.lr=%s (its checkpoints ran at %s)", latest.read_text(),
                    lr[0][1], lr[0][0])


def stage_inputs(cfg: JobConfig) -> dict:
    """``cfg.to_dict()`` with the tiny reasoner's recipe resolved where it is the model that runs
    (``TinyConfig.resolved``), as stage markers record it: a rerun that spells out the recipe's values resumes, and
    one whose recipe default changed since is refused before its bootstrap."""
    import dataclasses

    config = cfg.to_dict()
    tiny = cfg.model.tiny_that_runs()
    if tiny is not None:
        recipe = dataclasses.replace(tiny, task=cfg.data.task).resolved()
        config["model"]["tiny"].update({k: getattr(recipe, k) for k in RESOLVED})
    return config


def run_config(config: dict) -> dict:
    """``config`` as a stage marker records it (``stage_config.decisive``, through JSON)."""
    from stepentropy_rl.driver.stage_config import decisive

    return json.loads(json.dumps(decisive(config), default=str))


def make_init_model(base: str, out: Path) -> None:
    """The policy's starting point: the base model with ``[SKIP]`` as a normal added token."""
    from transformers import AutoModelForCausalLM

    tok, model = load_tokenizer(base), AutoModelForCausalLM.from_pretrained(base)
    add_skip_token(tok, model)
    shutil.rmtree(out, ignore_errors=True)  # not marked done: a killed build, or one from the base before a change
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def check_same_tiny(run_dir: Path, cfg: JobConfig) -> None:
    """ConfigError where ``run_dir`` was started from another tiny reasoner than the one ``cfg`` resolves to (its
    cache key, ``tiny-KEY``): a recipe whose defaults changed since the run began (``RECIPES``), which markers
    written before they resolved the recipe cannot show. Checked before the bootstrap, which would train the new
    model for minutes only for ``check_same_base`` to refuse it."""
    import dataclasses

    base, tiny = Stages(run_dir).info("init").get("base"), cfg.model.tiny_that_runs()
    if not base or tiny is None or not Path(base).name.startswith("tiny-"):
        return
    tiny = dataclasses.replace(tiny, task=cfg.data.task)
    now = tiny_model_path(tiny).name
    if Path(base).name != now:
        try:
            recorded = json.loads((Path(base) / "bootstrap.json").read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        want = recipe_to_train(recorded, tiny, Path(base).name) if recorded is not None else None
        if recorded is None:
            how = "set model.tiny.* as that bootstrap.json says to resume it"
        elif want:
            keys = (f"data.{k}" if k.startswith("task.") else f"model.tiny.{k}" for k in want)
            how = f"rerun with {' '.join(f'{k}={override_value(v)}' for k, v in zip(keys, want.values()))} to resume it"
        else:
            how = ("no model.tiny.* or data.task.* values train that model again (the task's wording or the cache "
                   "key's format changed since)")
        raise ConfigError(f"{run_dir} was started from the tiny reasoner {Path(base).name}, and this job's config "
                          f"trains {now} (its model.tiny values, or the recipe's defaults, differ: the old recipe is "
                          f"in {base}/bootstrap.json): give the job another run_dir, or {how}")


def check_same_base(recorded: dict, base_path: str, run_dir: Path) -> None:
    """ConfigError unless the base this job resolved is the one ``run_dir`` was started from (``init.done``): a rerun
    with another ``model.path``, other ``model.tiny.*`` or weights rewritten in place would mix two models in one run,
    and write the old model's CoTs into the cache under the new base's key. Markers without a fingerprint pass."""
    was = recorded.get("fingerprint")
    if was is not None and json.loads(json.dumps(model_fingerprint(base_path))) != was:
        raise ConfigError(f"{run_dir} was started from the base {recorded.get('base')!r}, and this job's base "
                          f"{base_path!r} is another model (or its files changed since): rerun with the same model, "
                          f"or give the job a new run_dir")


def problems_digest(problems) -> str:
    """Which problems, in which order, with which prompts and answers: a short hash a stage marker records."""
    import hashlib

    rows = [[p.id, p.prompt, p.system, p.answer] for p in problems]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def check_same_problems(stages: "Stages", eval_problems, train_problems, run_dir: Path) -> None:
    """ConfigError unless the problems are those the finished stages used: a data file rewritten in place, or
    ``data.overlong=skip`` dropping others under a changed token budget, would mix two problem sets in one report
    (the base evaluated on one, the final model on another). Markers without a digest pass."""
    for stage, key, problems, what in (("eval_base", "eval_problems", eval_problems, "held-out"),
                                       ("prune", "train_problems", train_problems, "training")):
        was = stages.info(stage).get(key)
        if was is not None and was != problems_digest(problems):
            raise ConfigError(f"{run_dir}: the {what} problems differ from those its stage {stage!r} used (the "
                              f"data file changed, or data.overlong=skip dropped others under a new token budget): "
                              f"rerun with the same data and budgets, or give the job a new run_dir")


@register_pipeline("train", train_data=True)
def train_pipeline(job) -> dict:
    """init -> eval base -> prune -> SFT -> eval SFT -> GRPO -> eval final -> report (each stage once)."""
    return run_training(job.cfg, job.run_dir, job.model_path, job.train_problems, job.eval_problems, job.grade)


def run_training(cfg: JobConfig, run_dir: Path, base_path: str, train_problems, eval_problems, grade) -> dict:
    """``grade(response, answer)``: the span-aware grader (``grading.make_grader``)."""
    from stepentropy_rl.cot_cache import CoTCache, added_rows_digest
    from stepentropy_rl.driver import roles
    from stepentropy_rl.driver.evaluate import evaluate
    from stepentropy_rl.driver.placement import reserve_job
    from stepentropy_rl.driver.sft import build_pruned_dataset, run_sft
    from stepentropy_rl.driver.tracking import Tracker

    stages, models = Stages(run_dir, run_config(stage_inputs(cfg))), run_dir / "models"
    models.mkdir(exist_ok=True)
    init = models / "init"
    if not stages.done("init"):
        make_init_model(base_path, init)
        stages.mark("init", {"base": base_path, "fingerprint": model_fingerprint(base_path)})
    check_same_base(stages.info("init"), base_path, run_dir)
    check_same_problems(stages, eval_problems, train_problems, run_dir)
    if all(stages.done(name) for name in ORDER):  # a finished run rerun (a resumed sweep): no actor to start
        log.info("every stage of %s is done; the report is written again from their results", run_dir)
        return _report(run_dir, stages)
    for name in ("report.json", "report.md"):  # a report of stages this job redoes (their markers deleted) would
        if (run_dir / name).exists():  # be read as this config's until the job ends, or if it never does
            log.info("%s is of stages this job runs again; removed", run_dir / name)
            (run_dir / name).unlink()
    tok = load_tokenizer(init)
    tc = cfg.trainer
    # every actor's CPUs and GPUs at once (driver/placement.py): a job short of them stops here, before any
    # engine loads, and holds nothing
    placement = reserve_job(cfg, train=True)
    learners = tracker = None
    try:
        rollouts = roles.spawn_rollouts(cfg, str(init), placement)
        reference = roles.spawn_reference(cfg, str(init), placement)
        reward = roles.spawn_reward(cfg, tok.convert_tokens_to_ids(SKIP_TOKEN), tok.convert_tokens_to_ids(THINK_CLOSE),
                                    placement)
        # the learners start with the engines: their start-up overlaps the base evaluation's
        lc = cfg.cluster.learner
        start = models / "sft" if stages.done("sft") else init
        learners = roles.spawn_learners(str(start), lc, tc.optim, tc.micro_batch_size, tok.pad_token_id, placement)
        from stepentropy_rl.driver.grpo import GRPOTrainer  # verl: 7 s on 2 cores, while the actors start

        tracker = Tracker(run_dir, tc.logger, cfg.to_dict())
        eval_sampling = {"temperature": float(tc.eval.temperature), "top_p": float(cfg.rollout.top_p),
                         "max_tokens": int(tc.eval.max_tokens), "logprobs": tc.eval.topk_logprobs or None}
        # a rerun after a crash: the engines' sampler state as the last finished stage left it, so that the next stage
        # samples what it would have in one uninterrupted run (a GRPO checkpoint restores its own)
        rollouts.set_rng_states(stages.latest("engine_rng"))

        # the base's CoTs, kept between jobs: its evaluation and the prune stage's (cot_cache); the policy is init, the
        # base with [SKIP] added: the base's files and the token's rows as init holds them stand for it
        skip_rows = added_rows_digest(init, [tok.convert_tokens_to_ids(SKIP_TOKEN)])
        # where the samples and entropies are computed: asked of the workers (it waits for the reference to load, so
        # only when a cache is on)
        runtime = roles.workers_runtime(rollouts, reference) if tc.eval.cache or tc.prune.cache else None
        base_cache = CoTCache.for_job(cfg, base_path, f"with {SKIP_TOKEN} added, rows {skip_rows}", runtime)

        def eval_stage(name: str, model_dir: Path, cache: CoTCache | None = None) -> None:
            if stages.done(f"eval_{name}"):
                return
            rollouts.serve(str(model_dir))  # the engines read the shared run dir
            res = evaluate(rollouts, tok, eval_problems, grade, eval_sampling, cots=True, cache=cache)
            cached = {"cots_cached": res.pop("cots_cached")} if cache is not None else {}
            die_at("eval_done")
            (run_dir / "eval").mkdir(exist_ok=True)
            write_jsonl(run_dir / "eval" / f"{name}.cots.jsonl", res.pop("cots"))  # python -m stepentropy_rl.view
            atomic_write_json(run_dir / "eval" / f"{name}.json", res, indent=None)
            log.info("eval %s: accuracy %.3f ± %.3f, thinking tokens %.1f, [SKIP] per sample %.2f", name,
                     res["accuracy"], res["accuracy_stderr"], res["thinking_tokens"], res["skips"])
            digest = {"eval_problems": problems_digest(eval_problems)} if name == "base" else {}
            stages.mark(f"eval_{name}", {**res, **cached, **digest, "engine_rng": rollouts.rng_states()})

        eval_stage("base", init, base_cache if tc.eval.cache else None)
        prune_dir = run_dir / "prune"
        if not stages.done("prune"):
            if not stages.done("sft"):  # nothing logs before this stage: rows here are of an SFT and a GRPO that
                tracker.rewind(0)  # this job runs again (their markers deleted with this one's)
            prune_dir.mkdir(exist_ok=True)
            sampling = {"temperature": float(cfg.rollout.temperature), "top_p": float(cfg.rollout.top_p),
                        "max_tokens": int(cfg.rollout.max_tokens)}
            rollouts.serve(str(init))  # the policy's own CoTs
            rows, stats = build_pruned_dataset(train_problems, rollouts, reference, tok, grade, tc.prune, sampling,
                                               cfg.reference.batch_size, base_cache if tc.prune.cache else None,
                                               cfg.reference.chunk_rows, cfg.rollout.answer_temperature)
            write_jsonl(prune_dir / "sft_data.jsonl", rows)
            die_at("prune_written")
            atomic_write_json(prune_dir / "stats.json", stats)
            log.info("prune stage: %s", stats)
            stages.mark("prune", {**stats, "metrics_bytes": tracker.size(), "engine_rng": rollouts.rng_states(),
                                  "train_problems": problems_digest(train_problems)})
        if not stages.done("sft"):
            tracker.rewind(stages.info("prune").get("metrics_bytes"))  # a killed SFT's rows are made again
            run_sft(sft_rows(prune_dir, run_dir), learners, tok, tc.sft, cfg.seed, tracker)
            learners.save_checkpoint(str(run_dir / "sft_state"))  # the optimizer state GRPO continues with
            learners.save_hf(str(models / "sft"), str(init))
            die_at("sft_saved")
            stages.mark("sft", {"metrics_bytes": tracker.size()})
        eval_stage("sft", models / "sft")
        if not stages.done("grpo"):
            # KL reference: the policy GRPO starts from (verl, TRL), or the pre-SFT base (algorithm.kl_reference);
            # named in every reference call, so a reference that Ray restarts with its first model reloads it
            kl_model = str(models / "sft") if cfg.algorithm.kl_reference == "sft" else str(init)
            if kl_model != str(init):
                ray.get(reference.load.remote(kl_model))
            fresh = not (run_dir / "grpo" / "latest").exists()
            if fresh and start != init and (run_dir / "sft_state").exists():
                learners.load_checkpoint(str(run_dir / "sft_state"))  # as if SFT had just finished in this run
                log.info("GRPO starts from the SFT learners' state, SFT optimizer state included (%s)",
                         run_dir / "sft_state")
            if fresh:
                if tc.grpo.optimizer == "fresh":
                    learners.reset_optimizer()
                (run_dir / "grpo").mkdir(exist_ok=True)  # what a rerun's checkpoints are checked against
                atomic_write_json(run_dir / "grpo" / "config.json", stages.config)
            rollouts.attach_learners(learners, lc.backend, lc.sync_bucket_mb, lc.sync_timeout_s)
            actors = roles.Actors(rollouts, reference, reward, learners)
            trainer = GRPOTrainer(cfg.algorithm, tc.grpo, cfg.reference, actors, train_problems, tok, run_dir, tracker,
                                  seed=cfg.seed, reference_model=kl_model, clock=stages.elapsed)
            if trainer.resume():
                stages.carry(trainer.seconds_before)  # stage_seconds: the earlier runs' time up to the checkpoint
            else:
                tracker.rewind(stages.info("sft").get("metrics_bytes"))  # rows of steps before any checkpoint
                trainer.push_weights()
            learners.set_lr(tc.grpo.lr)  # after a checkpoint's optimizer state, which holds its own
            faults = FaultInjection.from_config(tc.grpo)
            trainer.fit(hooks=[faults] if faults else [])
            learners.save_hf(str(models / "final"), str(init))
            stages.mark("grpo", {"steps": trainer.step, "engine_rng": rollouts.rng_states()})
        eval_stage("final", models / "final")
    finally:
        try:
            if learners is not None:
                learners.shutdown()
            if tracker is not None:
                tracker.finish()
        finally:  # under hydra's Ray launcher the session outlives the job: a reservation kept would starve the next
            placement.release()
    return _report(run_dir, stages)


def sft_rows(prune_dir: Path, run_dir: Path) -> list[dict]:
    """The prune stage's rows; ConfigError where an older version wrote them as text (no ``response_ids``): SFT
    would encode them, which tokenizes the whitespace before each ``[SKIP]`` as the base never writes it."""
    rows = [json.loads(line) for line in (prune_dir / "sft_data.jsonl").read_text().splitlines()]
    if any(not r.get("response_ids") for r in rows):
        raise ConfigError(f"{prune_dir / 'sft_data.jsonl'} holds rows written as text by an older version (no "
                          f"response_ids); delete {run_dir / 'stages'}/prune.done and the markers after it (and move "
                          f"{run_dir / 'grpo'} aside if it exists) to build them again from the CoTs' ids")
    return rows


def _report(run_dir: Path, stages: Stages) -> dict:
    from stepentropy_rl import report

    table = {name: json.loads((run_dir / "eval" / f"{name}.json").read_text()) for name in ("base", "sft", "final")}
    return report.write_training_report(run_dir, table, stages.seconds())
