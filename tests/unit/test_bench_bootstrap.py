"""scripts/bench_bootstrap.py's bookkeeping (no model is trained or served here)."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_bootstrap.py"


def test_each_base_gets_its_own_figures_file_unless_one_is_named():
    """The README's three-seed recipe (``model.tiny.seed=S``) wrote every seed to runs/bench_bootstrap.json, so only
    the last seed's figures were kept."""
    spec = importlib.util.spec_from_file_location("bench_bootstrap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keys = ("9d8df1a6460c", "0a1b2c3d4e5f")
    got = [module.out_path(None, f"/home/u/.cache/stepentropy_rl/tiny-{key}") for key in keys]
    assert got == [Path(f"runs/bench_bootstrap/tiny-{key}.json") for key in keys]
    assert module.out_path("x/y.json", "/m/tiny-9d8df1a6460c") == Path("x/y.json")
