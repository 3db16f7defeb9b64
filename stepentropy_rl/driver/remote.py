"""Calling workers: ``fetch`` resolves what a ``.remote()`` call returned; ``token_entropies`` asks the reference;
``ActorLost`` stops a run whose learner died."""
from __future__ import annotations

import itertools

import ray

_SCORE_CALLS = itertools.count()  # names each scoring call's progress counter


class ActorLost(RuntimeError):
    """A role that cannot be restarted in place died (a learner rank: its process group is gone); the run stops and
    a rerun of the same command resumes from the last checkpoint."""


def fetch(x):
    """``ray.get`` for an object ref (or a list of them); a plain value passes through, so in-process test doubles
    can stand in for any worker."""
    if isinstance(x, ray.ObjectRef) or (isinstance(x, list) and x and isinstance(x[0], ray.ObjectRef)):
        return ray.get(x)
    return x


def token_entropies(reference, prompts: list[list[int]], responses: list[list[int]], batch_size: int = 16,
                    chunk_rows: int = 2048) -> list[list[float]]:
    """Exact per-token entropies of each response (teacher-forced by the reference actor, or a double with its
    ``score``), as lists for the pure step functions (``entropy.scored_steps``)."""
    from stepentropy_rl.batch import Batch

    if not prompts:
        return []
    from stepentropy_rl.driver import progress

    batch = Batch.from_pairs(prompts, responses, pad_id=0)
    board = progress.board()
    if board is None:
        ref = reference.score.remote(batch, batch_size, chunk_rows)
    else:
        key = f"score/{next(_SCORE_CALLS)}"  # not id(batch): a freed batch's id comes back, with its old count
        ref = reference.score.remote(batch, batch_size, chunk_rows, progress=(board, key))
        progress.wait([ref], [key], "scoring entropies", len(batch), "CoT")
    scored = batch.union(fetch(ref))
    return [e.tolist() for e in scored.per_response("entropy")]
