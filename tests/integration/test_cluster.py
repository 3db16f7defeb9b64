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


@pytest.mark.engine
def test_a_job_too_big_for_the_cluster_reserves_nothing_and_says_what_it_asked(ray_session):
    """The whole job's bundles are reserved at once or not at all: short of room, the error names what the job
    reserves, what the cluster has and the timeout key, and the partial reservation is given back."""
    import ray

    from stepentropy_rl.driver.placement import reserve
    from stepentropy_rl.driver.remote import ActorLost

    before = ray.available_resources().get("CPU", 0)
    bundles = [("rollout", {"CPU": 1.0})] * 2 + [("reference", {"CPU": 1.0}), ("reward", {})] + \
        [("learner", {"CPU": 1.0})] * 2  # 5 CPUs on a 4-CPU cluster
    with pytest.raises(ActorLost, match=r"cluster.start_timeout_s=1 s: they reserve 5 CPU, 0 GPU together "
                                        r"\(cluster.rollout 2 x \{1 CPU, 0 GPU\}; .*cluster.learner 2 x .*the Ray "
                                        r"cluster has 4 CPU, .* free \(the cluster is too small for it\)"):
        reserve(bundles, 1.0, "cluster.start_timeout_s")
    assert _settles("CPU", before)
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values()
               if pg["bundles"] and sum(b.get("CPU", 0) for b in pg["bundles"].values()) == 5)


@pytest.mark.engine
def test_an_actor_runs_in_its_bundle_and_ends_with_the_reservation(ray_session):
    """The reward service spawned with the job's placement takes its bundle (the group's resources, not the
    cluster's free ones); giving the reservation back ends it. An actor that reserves nothing gets no bundle."""
    import ray

    from stepentropy_rl.driver.placement import reserve
    from stepentropy_rl.driver.roles import spawn_reward

    job = build_job("cluster.reward.num_cpus=0.3", "cluster.reward.max_restarts=0")  # else Ray restarts it
    # into the group that is gone, where it waits for resources that never come
    placement = reserve([("reference", {}), ("reward", {"CPU": 0.3})], 60.0, "cluster.start_timeout_s")
    assert placement.options("reference") == {} and placement.slots == {"reference": [None], "reward": [0]}
    bundle_cpu = f"CPU_group_0_{placement.pg.id.hex()}"
    assert _settles(bundle_cpu, 0.3)
    reward = spawn_reward(job, skip_id=-1, close_id=-1, placement=placement)
    assert ray.get(reward.terms.remote("explore"))
    assert _settles(bundle_cpu, 0.0)  # taken by the actor
    placement.release()
    placement.release()  # idempotent
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(reward.terms.remote("explore"), timeout=60)


def _settles(key: str, value: float, timeout_s: float = 30.0) -> bool:
    """Whether Ray's view of the free resource ``key`` reaches ``value`` within ``timeout_s`` (it lags the events)."""
    import time

    import ray

    end = time.time() + timeout_s
    while abs(ray.available_resources().get(key, 0.0) - value) > 1e-6:
        if time.time() > end:
            return False
        time.sleep(0.1)
    return True


def build_job(*overrides):
    from stepentropy_rl.config import build
    from tests.unit.test_config import cfg

    return build(cfg(*overrides))
