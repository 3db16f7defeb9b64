"""`pip install .` (not editable) gives a working install: the Hydra configs and the shipped data travel inside the
package, and the main job composes and validates from any directory."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_non_editable_install_composes_and_validates_from_elsewhere(tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert (site / "stepentropy_rl" / "conf" / "experiment" / "r1_standin.yaml").is_file()
    assert (site / "stepentropy_rl" / "shipped_data" / "champ_test.jsonl").is_file()
    for pkg in ("tasks", "driver"):
        assert (site / "stepentropy_rl" / pkg / "__init__.py").is_file()
    assert (site / "stepentropy_rl" / "py.typed").is_file()
    env = {**os.environ, "PYTHONPATH": str(site)}
    job = subprocess.run([sys.executable, "-m", "stepentropy_rl.main", "+experiment=r1_standin", "--cfg", "job",
                          "--resolve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-2000:]
    assert f"path: {site}/stepentropy_rl/shipped_data/champ_test.jsonl" in job.stdout
    check = ("import stepentropy_rl, workers; from hydra import compose, initialize_config_module; "
             "from stepentropy_rl.config import build\n"
             "with initialize_config_module('stepentropy_rl.conf', version_base=None):\n"
             "    c = compose('config', overrides=['+experiment=r1_standin', 'run_dir=/tmp/x'])\n"
             "assert build(c).cluster.learner.world_size == 2\n"
             "print(stepentropy_rl.__file__, workers.__file__)")
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [str(site / "stepentropy_rl" / "__init__.py"), str(site / "workers" / "__init__.py")]
