"""Training entry point: `python -m strata_workloads.train` (alone, under torchrun, or in operator pods).

Reads the layout and hyper-parameters from STRATA_* variables (settings.py) and the rendezvous from torch's
own variables (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The exit code is
the contract's (strata_api.workload.ExitCode): 0 done, 85 checkpointed on SIGTERM, 2 invalid configuration
or nothing a restart could succeed with (no checkpoint loads, or the loss diverged).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from strata_api.workload import ExitCode
from strata_workloads.checkpoint import NoUsableCheckpoint
from strata_workloads.datasets import DatasetError
from strata_workloads.settings import TrainSettings, load_train_settings
from strata_workloads.telemetry import setup_logging
from strata_workloads.trainer import Process, Trainer, TrainingPlan

log = logging.getLogger("strata_workloads.train")


def run(settings: TrainSettings, env: Mapping[str, str]) -> int:
    """Join the process group (when MASTER_ADDR is set), check the plan, train; always leave the group."""
    process = Process.join(env)
    try:
        show_bar = setup_logging(settings.log_format, process.rank)
        try:
            plan = TrainingPlan.of(settings, process.world)
        except (ValueError, KeyError) as err:
            log.error("invalid configuration", extra={"error": str(err)})
            return ExitCode.INVALID_CONFIGURATION
        try:
            trainer = Trainer(settings, plan, process, show_bar)
        except DatasetError as err:
            log.error("invalid dataset", extra={"error": str(err)})
            return ExitCode.INVALID_CONFIGURATION
        except NoUsableCheckpoint as err:
            # Not "retry": a restart would find the same bytes. A person must repair or remove the checkpoints.
            log.error("no usable checkpoint", extra={"error": str(err)})
            return ExitCode.NO_USABLE_CHECKPOINT
        return trainer.fit()
    finally:
        Process.leave()


def main(argv: Sequence[str] | None = None) -> int:
    return run(load_train_settings(argv), os.environ)  # a value that does not parse exits 2, as a bad layout


if __name__ == "__main__":
    sys.exit(main())
