"""Workload test setup.

- Makes this folder's helper modules importable (pytest's importlib mode does not put test folders on
  sys.path); spawned ranks inherit sys.path, so they can import the workers too.
- The environment sets PYTHONDONTWRITEBYTECODE, so every rank this suite starts would compile torch,
  sklearn and dynamo from source (tens of seconds per process on a busy 2-core machine). Child processes
  get a private bytecode cache instead; the shared virtualenv is left untouched.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

PYCACHE = Path(tempfile.gettempdir()) / "strata-workloads-pycache"
if sys.flags.dont_write_bytecode and sys.pycache_prefix is None:
    # The same for this process: modules imported from here on (torchao, aiohttp test utils) are cached too.
    sys.pycache_prefix = str(PYCACHE)
    sys.dont_write_bytecode = False


@pytest.fixture(autouse=True, scope="session")
def _child_bytecode_cache() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
