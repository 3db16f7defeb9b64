"""Writes that a crash cannot leave half done: write beside the target, then rename over it (atomic on POSIX)."""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file and a rename: readers see the old file or the whole new one,
    and a write that fails leaves no temp file behind.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); (d / "x").mkdir(); _ = (d / "x" / "f").write_text("")
    >>> atomic_write_bytes(d / "x", b"1")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    IsADirectoryError: ...
    >>> sorted(q.name for q in d.iterdir())
    ['x']
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a machine that crashes leaves the old file or the new
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(path: Path) -> None:
    """The directory's entries (a rename, a new file) on disk; where the file system cannot, nothing."""
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """Every file under ``path`` and every directory on disk: what a marker vouches for (a saved model) must survive
    a machine crash that the marker survives."""
    path = Path(path)
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) written atomically (:func:`atomic_write_bytes`).

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write_text(p, "x\\n").read_text(), sorted(q.name for q in p.parent.iterdir())
    ('x\\n', ['a.txt'])
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, indent: int | None = 1) -> Path:
    """``obj`` as JSON (one trailing newline), written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_write_jsonl(path: str | Path, rows) -> Path:
    """One JSON object per line, written atomically."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


@contextmanager
def atomic_dir(path: str | Path):
    """Yield a fresh temp directory beside ``path``; when the block ends without an error it is renamed to ``path``.
    If ``path`` appeared meanwhile (another process built it) the temp directory is dropped and ``path`` kept; after
    an error the temp directory is removed and ``path`` never exists half-built.

    >>> import tempfile; d = Path(tempfile.mkdtemp()) / "model"
    >>> with atomic_dir(d) as tmp: _ = (tmp / "w").write_text("1")
    >>> (d / "w").read_text(), sorted(q.name for q in d.parent.iterdir())
    ('1', ['model'])
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_tree(tmp)  # on disk before the rename (and before any marker that vouches for it)
    try:
        os.replace(tmp, path)  # fails onto a directory another process finished first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not path.exists():  # not another process's directory: a real error
            raise
    _fsync_dir(path.parent)


class RunDirLock:
    """``run_dir/.lock`` held by this process (a POSIX record lock: the OS drops it when the process dies, killed
    or not, and forked workers such as the grader pool's do not inherit it), so that two drivers never write one run
    directory: a rerun while an earlier driver still runs (a dropped SSH session under nohup, a requeued job) would
    interleave their metrics, checkpoints and markers. ``release()`` frees it. A filesystem without POSIX locks (NFS
    without its lock daemon, Lustre mounted without ``flock``) runs the job unlocked, with a warning."""

    def __init__(self, run_dir: str | Path):
        from stepentropy_rl.typed import ConfigError

        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):  # no locks on this filesystem: not another job
                log.warning("%s cannot be locked (%s): nothing stops a second driver from writing %s", self.path, e,
                            run_dir)
                return
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            self.release()
            raise ConfigError(f"another job is running in {run_dir} ({holder} holds {self.path}); wait for it to end "
                              f"or stop it, or give this job another run_dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None


def cache_root() -> Path:
    return Path(os.environ.get("STEPENTROPY_CACHE", Path.home() / ".cache" / "stepentropy_rl"))


def build_cached(path: Path, build) -> Path:
    """``path`` if it is complete (a DONE marker), else ``build(tmp)`` into a fresh directory that is renamed into
    place once whole: a crash leaves no half-built model. A lock file beside it (``<name>.lock``) makes concurrent
    jobs (a Hydra sweep on a fresh cache) build it once: the others wait, then read it."""
    from filelock import FileLock, Timeout

    if (path / "DONE").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another job is building %s; waiting for it (%s.lock)", path, path)
        lock.acquire()
    try:
        if path.exists() and not (path / "DONE").exists():  # an interrupted copy of the cache, DONE deleted by hand:
            stale = path.with_name(f"{path.name}.incomplete{os.getpid()}")  # moved aside, or the built one could
            log.warning("%s is incomplete (no DONE); building it again", path)  # not be renamed onto it
            shutil.rmtree(stale, ignore_errors=True)  # an earlier attempt's, under a pid used again
            os.replace(path, stale)
            shutil.rmtree(stale, ignore_errors=True)
        if not (path / "DONE").exists():
            with atomic_dir(path) as tmp:
                build(tmp)
                (tmp / "DONE").write_text("ok\n")
    finally:
        lock.release()
    return path
