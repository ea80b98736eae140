"""The operator's unit tests share test-object builders (``operator_builders``) with its cluster tests.

Tests are imported with ``--import-mode=importlib``, which leaves ``sys.path`` alone, so this folder is put on
it here; the builder module has a name no other folder uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
