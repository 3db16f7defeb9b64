"""Cached builds: one build when jobs start at once, nothing half-built, another process's result kept."""
import os
import threading
import time

from stepentropy_rl.files import atomic_dir, build_cached


def test_concurrent_jobs_build_a_cached_model_once(tmp_path, caplog):
    """A Hydra sweep on a fresh cache starts its jobs at once: without the lock each trained the base itself."""
    calls, started = [], threading.Event()

    def build(tmp):
        calls.append(tmp.name)
        started.set()
        time.sleep(0.5)  # the others arrive while it builds
        (tmp / "weights").write_text("w")

    path = tmp_path / "tiny-abc"
    got = []
    first = threading.Thread(target=lambda: got.append(build_cached(path, build)))
    first.start()
    started.wait(5)
    others = [threading.Thread(target=lambda: got.append(build_cached(path, build))) for _ in range(2)]
    with caplog.at_level("INFO", logger="stepentropy_rl.files"):
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(10)
    assert len(calls) == 1 and got == [path] * 3
    assert (path / "weights").read_text() == "w" and (path / "DONE").exists()
    assert "another job is building" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-abc", "tiny-abc.lock"]  # no temp directory left


def test_a_directory_another_job_renamed_into_place_first_is_kept_and_the_temp_one_dropped(tmp_path, monkeypatch):
    """The other job's rename lands between the check and ours: a rename onto a full directory fails, and that
    failure is the other job's success, not an error."""
    import os

    from stepentropy_rl import files

    path, rename = tmp_path / "model", os.replace

    def other_job_first(src, dst):
        path.mkdir()
        (path / "theirs").write_text("2")
        rename(src, dst)

    monkeypatch.setattr(files.os, "replace", other_job_first)
    with atomic_dir(path) as tmp:
        (tmp / "mine").write_text("1")
    assert [p.name for p in path.iterdir()] == ["theirs"] and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_incomplete_cached_directory_is_built_again(tmp_path, caplog):
    """A cache copied in part (no DONE): the build finished, its rename onto the partial directory failed, and the
    partial one was returned as the model, on every run."""
    path = tmp_path / "tiny-abc"
    path.mkdir()
    (path / "config.json").write_text("{}")
    with caplog.at_level("WARNING", logger="stepentropy_rl.files"):
        got = build_cached(path, lambda tmp: (tmp / "weights").write_text("w"))
    assert got == path and sorted(p.name for p in path.iterdir()) == ["DONE", "weights"]
    assert "is incomplete (no DONE)" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-abc", "tiny-abc.lock"]


def test_a_run_directory_is_written_by_one_driver_at_a_time(tmp_path):
    """A rerun while an earlier driver still ran the same directory (nohup after a dropped SSH session) interleaved
    their metrics, checkpoints and markers. The second is refused, naming the holder; once the first is gone (killed:
    the OS drops its lock) the directory is free again."""
    import subprocess
    import sys

    import pytest

    from stepentropy_rl.files import RunDirLock
    from stepentropy_rl.typed import ConfigError

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from stepentropy_rl.files import RunDirLock; "
                               f"RunDirLock({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"another job is running in {tmp_path} \(pid {holder.pid} on "):
            RunDirLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    lock = RunDirLock(tmp_path)
    assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()


def test_a_filesystem_without_locks_runs_the_job_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    """NFS without its lock daemon answers ENOLCK: that is no other job, and refusing it refused every run there."""
    import errno

    from stepentropy_rl import files

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(files.fcntl, "lockf", no_locks)
    with caplog.at_level("WARNING", logger="stepentropy_rl.files"):
        files.RunDirLock(tmp_path).release()
    assert "cannot be locked" in caplog.text and "No locks available" in caplog.text


def test_atomic_writes_and_saved_models_reach_the_disk_before_what_vouches_for_them(tmp_path, monkeypatch):
    """Without fsync a machine crash could keep a stage marker or the 'latest' pointer while the file it vouches for
    was still empty in the page cache."""
    from stepentropy_rl import files

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    files.atomic_write_text(tmp_path / "latest", "step_3")
    assert synced[0].startswith(str(tmp_path / "latest.tmp")) and synced[-1] == str(tmp_path)  # data, then the rename
    synced.clear()
    model = tmp_path / "models" / "final"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"w")
    (model / "sub" / "t.json").write_text("{}")
    files.fsync_tree(model)
    assert {str(model / "model.safetensors"), str(model / "sub" / "t.json"), str(model), str(model / "sub"),
            str(tmp_path / "models")} <= set(synced)
    synced.clear()
    with files.atomic_dir(tmp_path / "models" / "init") as tmp:  # models/init, the tiny cache, an export
        (tmp / "config.json").write_text("{}")
    assert synced[0].endswith("config.json") and synced[-1] == str(tmp_path / "models")  # files, then the rename
