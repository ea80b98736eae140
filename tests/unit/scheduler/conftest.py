"""The scheduler's unit tests share test-object builders (``scheduler_builders``) with its cluster tests.

The suite imports test modules with ``--import-mode=importlib``, which leaves ``sys.path`` alone, so this folder
is put on it once here; the builder module has a name no other folder uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
