"""The chart's unit tests render it with the pinned helm (no cluster); the helpers are in ``chart_render``.

Tests are imported with ``--import-mode=importlib``, which leaves ``sys.path`` alone, so this folder is put on it
here; the helper module has a name no other folder uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from chart_render import Chart  # noqa: E402

from strata_dev import binaries  # noqa: E402


@pytest.fixture(scope="session")
def chart() -> Chart:
    return Chart(binaries.ensure_tool("helm"))  # built on first use into ~/.cache/strata/tools
