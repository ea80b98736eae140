"""The figures workers report (tokens/s, MFU, peak memory, validation loss) become the TrainingJob's
``status.progress``, the summary ``kubectl get tj -o wide`` shows: the furthest worker's step with its figures, and
the largest peak memory of any worker (the one nearest to running out)."""

from __future__ import annotations

from dataclasses import replace

from operator_builders import a_job, a_node, a_pool, a_worker, at

from strata_api import Phase, format_time
from strata_api.workload import Progress
from strata_operator.core.lifecycle import progress_summary, reconcile
from strata_operator.settings import OperatorSettings

NODES = {f"n{i}": a_node(f"n{i}") for i in range(2)}


def test_the_status_summary_shows_the_furthest_steps_figures_and_the_largest_peak_memory() -> None:
    job = a_job(name="j", data=2, tensor=8, status={"phase": Phase.RUNNING.value, "attempt": 1})
    reports = [
        Progress(250, 200, None, 2.5, tokens_per_second=81_920.0, mfu=0.41, peak_memory_bytes=60 * 2**30),
        Progress(
            249,
            200,
            None,
            2.75,
            tokens_per_second=80_000.0,
            mfu=0.40,
            peak_memory_bytes=71 * 2**30,
            validation_loss=2.9,
        ),
    ]
    pods = [replace(a_worker("j", i, node=f"n{i}"), progress=report) for i, report in enumerate(reports)]
    raw = {"phase": "Running", "attempt": 1, "placement": {"gpuType": "H100"}, "startTime": format_time(at(0))}
    plan = reconcile(job, a_pool(), pods, NODES, at(60), OperatorSettings(), raw)
    assert plan.status.patch()["progress"] == {
        "step": 250,
        "loss": 2.5,
        "tokensPerSecond": 81_920.0,
        "mfu": 0.41,
        "peakMemoryBytes": 71 * 2**30,
    }


def test_a_worker_without_figures_reports_its_step_alone_and_an_evaluation_shows_its_loss() -> None:
    assert progress_summary([Progress(step=3)]) == {"step": 3}
    assert progress_summary([Progress(step=3, validation_loss=1.75)]) == {"step": 3, "validationLoss": 1.75}
