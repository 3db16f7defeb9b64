"""The layers the folders show: a pure core that imports neither Ray nor the workers nor the drivers, workers that
import only the core, and drivers as the only code that touches actors. Read from the source (every import, lazy
ones included), so a violation fails here before it can create a cycle."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "stepentropy_rl"
ENTRY = {PKG / "main.py"}  # the CLI entry hands the typed config to the driver


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def _modules(root: Path, skip=()) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not any(p.is_relative_to(s) for s in skip))


def _hits(path: Path, banned: tuple[str, ...]) -> list[str]:
    return sorted(m for m in _imports(path) if any(m == b or m.startswith(b + ".") for b in banned))


CORE = [p for p in _modules(PKG, skip=(PKG / "driver", PKG / "conf")) if p not in ENTRY]


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_neither_ray_nor_workers_nor_drivers(path):
    assert _hits(path, ("ray", "workers", "stepentropy_rl.driver", "vllm")) == []


@pytest.mark.parametrize("path", _modules(ROOT / "workers"), ids=lambda p: str(p.relative_to(ROOT)))
def test_workers_import_only_the_core(path):
    assert _hits(path, ("stepentropy_rl.driver", "stepentropy_rl.main")) == []


def test_only_roles_spawns_actors():
    """``.remote(`` on an actor class (``*Worker.options`` or ``*Worker.remote``) appears in driver/roles.py only."""
    spawning = []
    for path in _modules(ROOT / "stepentropy_rl") + _modules(ROOT / "workers"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("options", "remote") \
                    and isinstance(node.value, ast.Name) and node.value.id.endswith("Worker"):
                spawning.append(path.relative_to(ROOT).as_posix())
    assert set(spawning) == {"stepentropy_rl/driver/roles.py"}


def test_the_core_layer_is_really_core():
    """The check above sees the modules it should: the pure pieces the issue names are in the core."""
    names = {p.relative_to(PKG).as_posix() for p in CORE}
    assert {"entropy.py", "pruning.py", "rewards.py", "phase.py", "algorithms.py", "batch.py", "cot_format.py",
            "config.py"} <= names
