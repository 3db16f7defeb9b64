"""Multi-node readiness: the code travels with the job, and a run directory that some node cannot see fails fast."""
from pathlib import Path

import pytest

from stepentropy_rl.driver.roles import check_shared_run_dir, runtime_env


def test_runtime_env_ships_the_project_packages():
    env = runtime_env()
    names = sorted(Path(p).name for p in env["py_modules"])
    assert names == ["stepentropy_rl", "workers"]
    assert all((Path(p) / "__init__.py").is_file() for p in env["py_modules"])
    assert "PYTHONPATH" not in env["env_vars"]  # a path on the driver's disk means nothing on another node


@pytest.mark.engine
def test_shared_run_dir_passes_on_one_node(ray_session, tmp_path):
    check_shared_run_dir(tmp_path / "run")
    assert not (tmp_path / "run" / ".shared_check").exists()


def test_unshared_run_dir_names_the_node(tmp_path, monkeypatch):
    """A node that writes its answer to its own disk (here: another directory) is reported."""
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": "a" * 20, "Alive": True}, {"NodeID": "b" * 20, "Alive": True},
                                               {"NodeID": "c" * 20, "Alive": False}])
    elsewhere = tmp_path / "node_b_disk"
    elsewhere.mkdir()

    def writer(node, path, token):
        driver = Path(path) / "driver"
        target = Path(path) if node.startswith("a") else elsewhere
        (target / token).write_text(driver.read_text() if target == Path(path) else "")

    with pytest.raises(RuntimeError, match="not shared with Ray node.s. bbbbbbbbbbbb"):
        check_shared_run_dir(tmp_path / "run", writer=writer)
