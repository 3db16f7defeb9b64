"""Cached builds: one build when jobs start at once, nothing half-built, another process's result kept."""
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
