"""Where the dev tooling finds things in the repository checkout (it runs from a checkout, through ``make``).

Standard library only: :mod:`strata_dev.binaries` imports it before the virtual environment exists.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOMOD = REPO / "hack" / "gomod"
"""One wrapper Go module per control-plane binary (:mod:`strata_dev.binaries`)."""
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
SCHEDULER_CONFIG = REPO / "scheduler" / "config" / "kube-scheduler-config.yaml"
"""The shipped KubeSchedulerConfiguration: the ``strata-scheduler`` profile calling the extender."""
