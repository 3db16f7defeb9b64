"""User code named in a config: ``path/to/file.py:function`` loaded by file path, in whichever process needs it (the
driver, the reward actor), so a reward term or grader defined in a user's file reaches every worker that sees the
file (a shared run directory or working directory on a cluster)."""
from __future__ import annotations

import importlib.util
import sys
import zlib
from pathlib import Path

_LOADED: dict[tuple[str, str], object] = {}


def split_spec(spec: str) -> tuple[str, str] | None:
    """``("file.py", "function")`` for ``"file.py:function"``; None if ``spec`` does not name a Python file."""
    path, sep, name = str(spec).rpartition(":")
    return (path, name) if sep and path.endswith(".py") and name.isidentifier() else None


def load_function(path: str, name: str, key: str):
    """The callable ``name`` of the Python file ``path``; ``ValueError`` naming config ``key`` if the file is missing,
    fails to import, or has no such function. Each file is imported once per process."""
    file = Path(path).expanduser().resolve()
    if (str(file), name) in _LOADED:
        return _LOADED[str(file), name]
    if not file.is_file():
        raise ValueError(f"{key}: no such file {str(path)!r}")
    module_name = f"stepentropy_user_{zlib.crc32(str(file).encode()):08x}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # while it runs too: a @dataclass looks its module up there
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise ValueError(f"{key}: importing {file} failed ({type(e).__name__}: {e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"{key}: {file} has no function {name!r}")
    _LOADED[str(file), name] = fn
    return fn
