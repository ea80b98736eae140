"""Workload test setup.

- Makes this folder's helper modules importable (pytest's importlib mode does not put test folders on
  sys.path); spawned ranks inherit sys.path, so they can import the workers too.
- Bytecode: `make venv` precompiles the virtualenv (uv --compile-bytecode), so ranks import torch from
  __pycache__ even where PYTHONDONTWRITEBYTECODE is set. A private pycache prefix would bypass that and
  compile from source, where torchao's invalid escape sequence becomes an error under -W error.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
