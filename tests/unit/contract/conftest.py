"""Contract tests reuse the operator's and the scheduler's test-object builders (``operator_builders``: CRD
defaults applied as the API server would; ``scheduler_builders``: nodes and pods as the extender's cache reads
them). Both module names are unique to their folders."""

from __future__ import annotations

import sys
from pathlib import Path

for folder in ("operator", "scheduler"):
    TESTS = str(Path(__file__).resolve().parents[1] / folder)
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
