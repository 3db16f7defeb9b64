"""The one driver entry: resolve the model, load the data, start Ray, run the registered pipeline."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import yaml
from omegaconf import OmegaConf

from stepentropy_rl.driver import progress
from stepentropy_rl.config import ConfigError, JobConfig, check_context, context_needs
from stepentropy_rl.data import DataError, as_asked, check_gold_solution, generated, load_problems
from stepentropy_rl.driver.evaluate import labelled
from stepentropy_rl.files import RunDirLock, atomic_write_json, atomic_write_text
from stepentropy_rl.tasks.grading import grader_of
from stepentropy_rl.tiny_config import ensure_tiny_model
from stepentropy_rl.tokenizer import control_text, load_tokenizer, prompt_ids

log = logging.getLogger(__name__)
BUILTIN_PIPELINES = ("stepentropy_rl.driver.study", "stepentropy_rl.driver.train")


def resolve_model(cfg: JobConfig) -> str:
    """``model.path`` if set; else the R1-format stand-in for ``model.standin``; else the cached tiny reasoner for
    ``model.tiny`` + ``data.task`` (each built if missing)."""
    if cfg.model.path:
        return str(Path(cfg.model.path).expanduser())
    if cfg.model.standin is not None:
        from stepentropy_rl.r1_standin import ensure_r1_standin

        path = ensure_r1_standin(cfg.model.standin)
        log.info("R1-format stand-in: %s", path)
        return str(path)
    path = ensure_tiny_model(dataclasses.replace(cfg.model.tiny, task=cfg.data.task))
    log.info("tiny reasoner: %s", path)
    return str(path)


def eval_problems(cfg: JobConfig):
    """The held-out problems as the model is asked them (``data.prompt_template``, ``system_prompt``, ...)."""
    d = cfg.data
    if d.path:
        problems = load_problems(d.path, d.prompt_key, d.answer_key, "test")[: d.n_eval]
    else:
        problems = generated(d.task, d.n_eval, d.seed, "test")
    return as_asked(problems, d.prompt_template, d.system_prompt, d.chat_template_kwargs)


def train_problems(cfg: JobConfig):
    d = cfg.data
    if d.train_path:
        problems = load_problems(d.train_path, d.prompt_key, d.answer_key, "train")[: cfg.trainer.n_train]
    else:
        problems = generated(d.task, cfg.trainer.n_train, d.seed, "train")
    if cfg.trainer.prune.source == "gold":
        for p in problems:
            check_gold_solution(p)
    return as_asked(problems, d.prompt_template, d.system_prompt, d.chat_template_kwargs)


def fit_context(cfg: JobConfig, model_path: str, tok, problems: list, what: str) -> list:
    """The problems whose chat-formatted prompt plus each generation budget fits the engine's context, before any
    actor starts (vLLM would cut a response short without an error, or reject the request mid-run). A prompt that
    does not fit is a ``DataError`` naming its row, or under ``data.overlong=skip`` dropped and counted in
    ``data_report.json``; a budget that leaves no room even for the shortest prompt is a ``ConfigError`` naming
    the budget's key (so a skip never leaves no data). A question or system prompt that writes one of the tokenizer's
    control tokens as text is a ``DataError`` naming its row (``tokenizer.control_text``)."""
    from transformers import AutoConfig

    for p in problems:
        for part, text in (("question", p.prompt), ("system prompt", getattr(p, "system", None))):
            token = control_text(tok, text)
            if token:
                raise DataError(f"{p.where or p.id}: its {part} holds {token!r}, which the tokenizer reads as its "
                                f"control token, not as text; take it out of the row (or out of data.prompt_template "
                                f"/ data.system_prompt)")
    limit = cfg.rollout.engine.get("max_model_len") or getattr(AutoConfig.from_pretrained(model_path),
                                                                 "max_position_embeddings", None)
    if not problems or not limit:
        return problems
    lengths = [len(prompt_ids(tok, p)) for p in problems]
    check_context(cfg, min(lengths), limit, what)  # the shortest prompt: no room for any row
    key, budget = max(context_needs(cfg, what).items(), key=lambda kv: kv[1])  # held-out rows: the eval's budget only
    needs = [(key, budget)] * len(problems)
    if what == "train" and cfg.pipeline == "train" and cfg.trainer.prune.source == "gold":  # no rollout caps a gold CoT
        answer = cfg.trainer.prune.answer_max_tokens
        needs = [max(need, ("a gold solution's tokens + trainer.prune.answer_max_tokens",
                            len(tok(p.solution, add_special_tokens=False).input_ids) + answer), key=lambda kv: kv[1])
                 for p, need in zip(problems, needs)]
    fits = [n + need <= int(limit) for n, (_, need) in zip(lengths, needs)]
    if cfg.data.overlong == "error" and not all(fits):
        i = fits.index(False)
        raise DataError(f"{problems[i].where or problems[i].id}: the prompt is {lengths[i]} tokens; with {needs[i][0]} "
                        f"= {needs[i][1]} it exceeds the engine's context of {limit} tokens (set data.overlong=skip to "
                        f"drop such rows, or raise rollout.engine.max_model_len)")
    kept = [p for p, ok in zip(problems, fits) if ok]
    if len(kept) < len(problems):
        log.warning("%s data: skipped %d of %d prompts too long for the context (data.overlong=skip)",
                    what, len(problems) - len(kept), len(problems))
    return kept


@dataclass
class Job:
    """What every pipeline starts from: the config, its run directory, the model, one tokenizer, the problems
    (``train`` empty unless the pipeline asked for them) and the span-aware grader."""

    cfg: JobConfig
    run_dir: Path
    model_path: str
    tokenizer: object
    eval_problems: list
    train_problems: list
    grade: object
    lock: object = None  # files.RunDirLock, held until the job ends


def pipeline_for(cfg: JobConfig):
    """The registered pipeline named by ``cfg.pipeline``; ConfigError listing the known ones otherwise."""
    import importlib

    from stepentropy_rl.driver import PIPELINES

    for module in BUILTIN_PIPELINES:
        importlib.import_module(module)  # pipelines register on import

    if cfg.pipeline not in PIPELINES:
        raise ConfigError(f"pipeline must be one of {sorted(PIPELINES)} (choose one with +experiment=NAME, e.g. "
                          f"prune_sweep or entropy_guided), got {cfg.pipeline!r}")
    return PIPELINES[cfg.pipeline]


def overlap(held_out, train) -> list[str]:
    """Ids of the held-out problems whose question (whitespace and case aside) is also a training problem's."""
    norm = (lambda text: " ".join(text.lower().split()))
    asked = {norm(p.prompt) for p in train}
    return [p.id for p in held_out if norm(p.prompt) in asked]


def prepare(cfg: JobConfig, pipeline) -> Job:
    """Write the config, resolve the model, load the problems and the tokenizer, and check that every prompt and
    generation budget fits the engine's context: all before any actor starts."""
    run_dir = Path(cfg.run_dir)
    problems = eval_problems(cfg)  # a bad data file fails here, before the model is built or anything is written
    train = train_problems(cfg) if pipeline.train_data else []
    seen = overlap(problems, train)
    if seen:
        log.warning("%d of the %d held-out problems are also training problems (the same question: %s%s): their "
                    "accuracy measures what training saw (data.train_path names the held-out file?)", len(seen),
                    len(problems), ", ".join(seen[:5]), ", ..." if len(seen) > 5 else "")
    if train and cfg.trainer.prune.keep_essential and not labelled(train):
        raise ConfigError("trainer.prune.keep_essential needs step labels (the embedded task's generated data); the "
                          "training rows have none")
    if pipeline.train_data and (run_dir / "stages").is_dir():  # a rerun: its finished stages' base and config,
        from stepentropy_rl.driver.train import check_config, check_same_tiny, stage_inputs  # before any model is

        check_same_tiny(run_dir, cfg)  # built or config.yaml is rewritten
        check_config(run_dir, stage_inputs(cfg))
    model_path = resolve_model(cfg)
    tokenizer = load_tokenizer(model_path)
    counts = {"eval": len(problems), "train": len(train)}
    problems = fit_context(cfg, model_path, tokenizer, problems, "eval")
    train = fit_context(cfg, model_path, tokenizer, train, "train")
    if pipeline.train_data and (run_dir / "stages").is_dir():  # the problems the finished stages used, before this
        from stepentropy_rl.driver.train import Stages, check_same_problems  # job rewrites its record of the data

        check_same_problems(Stages(run_dir), problems, train, run_dir)
    lock = RunDirLock(run_dir)  # the first write: no other driver writes this directory from here on
    try:
        config = OmegaConf.to_yaml(cfg.to_dict())
        clear_results_of_another_config(run_dir, config)
        atomic_write_text(run_dir / "config.yaml", config)
        atomic_write_json(run_dir / "data_report.json",
                          {what: {"rows": counts[what], "used": len(rows), "skipped_overlong": counts[what] - len(rows)}
                           for what, rows in (("eval", problems), ("train", train))})
    except BaseException:
        lock.release()
        raise
    return Job(cfg, run_dir, model_path, tokenizer, problems, train, grader_of(cfg.data), lock)


RESULTS = ("summary.json", "report.json", "report.md")  # what says a job finished (collect), with its figures


def finished_study(run_dir: Path, pipeline) -> bool:
    """A study job that wrote its ``summary.json`` under this config (``prepare`` removed another config's): said and
    skipped before Ray and the engines start, so a resumed sweep redoes only its unfinished jobs (a training job skips
    its finished stages itself)."""
    if pipeline.train_data or not (run_dir / "summary.json").exists():
        return False
    log.info("%s holds this config's finished study (summary.json): nothing to do; delete it to run the study again",
             run_dir)
    return True


def clear_results_of_another_config(run_dir: Path, config: str) -> None:
    """Remove ``RESULTS`` from ``run_dir`` when its ``config.yaml`` is not ``config``: they are another config's
    figures, and a job of this one that stopped before writing its own would leave them under this config's name
    (``collect`` would read them as its results). Under the same config they stay: a resumed job rewrites them; so
    do they where only how the job is logged or run differs (``config.RUN_ONLY``: a sweep's job rerun alone,
    as ``collect`` advises, logs to no wandb group)."""
    from stepentropy_rl.driver.stage_config import same_results

    recorded = run_dir / "config.yaml"
    if not recorded.exists() or recorded.read_text() == config:
        return
    try:
        if same_results(yaml.safe_load(recorded.read_text()), yaml.safe_load(config)):
            return
    except yaml.YAMLError:  # a config cut short: another config's for all we know
        pass
    for name in RESULTS:
        if (run_dir / name).exists():
            log.info("%s is of another config than this job's; removed", run_dir / name)
            (run_dir / name).unlink()


def log_to_run_dir(run_dir: Path):
    """Append the job's log to ``run_dir/main.log`` where Hydra's log file is elsewhere (``run_dir=`` given: Hydra
    writes under ``outputs/DATE/TIME``, a new folder on every rerun): what ``main.buffer_log`` kept since the job
    started, and from now on. Returns the handler for the caller to remove, or None (Hydra's own file, or the
    buffer's, which ``main.close_log`` closes)."""
    from stepentropy_rl.main import RUN_LOG

    path = (Path(run_dir) / "main.log").resolve()
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    if any(Path(h.baseFilename).resolve() == path for h in files):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(files[0].formatter if files else logging.Formatter(
        "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    buffer = next((h for h in root.handlers if h.get_name() == RUN_LOG), None)
    if buffer is not None:
        buffer.setTarget(handler)
        buffer.flush()
        return None
    root.addHandler(handler)
    return handler


def run(cfg: JobConfig) -> None:
    """The one driver entry: prepare the job, start (or join) Ray, run the configured pipeline."""
    from stepentropy_rl.driver.roles import check_shared_run_dir, init_ray, release_actors, short_resources
    from stepentropy_rl.driver.tracking import run_id

    t0 = time.time()
    pipeline = pipeline_for(cfg)
    job = prepare(cfg, pipeline)
    handler = None
    try:
        handler = log_to_run_dir(job.run_dir)
        if finished_study(job.run_dir, pipeline):
            return
        started = init_ray(cfg.cluster, namespace=f"stepentropy-{run_id(job.run_dir)}")
        try:
            short = short_resources(cfg, pipeline.train_data)
            if short:
                log.warning(short)
            check_shared_run_dir(job.run_dir)
            progress.start(cfg.trainer.progress)
            with progress.logs_above_bars():
                pipeline(job)
        finally:
            progress.stop()
            if started:
                ray.shutdown()
            else:  # inside a Ray task (hydra/launcher=ray) the session is the launcher's: only its actors go
                release_actors()
        log.info("done in %.0f s; outputs in %s", time.time() - t0, job.run_dir)
    finally:
        if job.lock is not None:
            job.lock.release()
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
