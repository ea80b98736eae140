"""The operator as a real process, and a small client for a test's TrainingJobs and ResourcePools."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster_support import ClusterHandle, eventually
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

import strata_api as api
from strata_dev.cluster import EXIT_CODE_ANNOTATION, annotate_pods
from strata_workloads.progress import ProgressReporter


class OperatorProcess:
    """The operator as users run it, against the test cluster; restartable and killable."""

    def __init__(
        self,
        cluster: ClusterHandle,
        log_dir: Path,
        namespaces: tuple[str, ...],
        *flags: str,
        kubeconfig: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.namespaces = namespaces
        self.flags = flags
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        """Whose credentials the operator uses: the cluster admin's unless a test gives it an identity."""
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def args(self) -> list[str]:
        args = [
            sys.executable, "-m", "strata_operator",
            "--scheduler-name", "default-scheduler",
            "--metrics-port", "0",
            "--admission-interval-s", "0.5",
            "--resync-interval-s", "2",
            "--backoff-base-s", "1",
            "--backoff-max-s", "4",
            "--termination-grace-s", "5",
        ]  # fmt: skip
        for namespace in self.namespaces:
            args += ["--namespaces", namespace]
        return [*args, *self.flags]

    def start(self) -> OperatorProcess:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with (self.log_dir / f"operator-{self.starts}.log").open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


def cleaned_up_then_stopped(strata: Strata, *operators: OperatorProcess) -> None:
    """Remove the test's objects while its own ``operators`` still run, so that they take their finalizers off at
    once (the ``strata`` fixture's cleanup after them would wait 10 s for an operator first), then stop them."""
    strata.cleanup()
    for operator in operators:
        operator.stop()


@contextmanager
def replaced_by(operator: OperatorProcess, *flags: str) -> Iterator[OperatorProcess]:
    """Run another operator with ``flags`` (its log beside ``operator``'s) in place of the fixture's ``operator``,
    which is stopped meanwhile and started again after: the fixtures' cleanup needs it to remove kopf's
    finalizers."""
    operator.stop()
    folder = operator.log_dir / f"replaced-{operator.starts}"
    folder.mkdir()
    other = OperatorProcess(operator.cluster, folder, operator.namespaces, *flags).start()
    try:
        yield other
    finally:
        other.stop()
        operator.start()


def kill_at_write(
    operator: OperatorProcess,
    custom: client.CustomObjectsApi,
    namespace: str,
    plural: str,
    name: str,
    written: Callable[[dict[str, Any]], bool],
    change: Callable[[], None],
    timeout_s: float = 60,
) -> dict[str, Any]:
    """Make ``change`` and SIGKILL the operator at the first change of object ``name`` (of ``plural``) whose status
    ``written`` matches: a watch from before the change, so the kill lands right after that write, before anything
    queued behind it is sent. The status as written."""
    listed = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural)
    killed = threading.Event()
    status: dict[str, Any] = {}

    def watch_and_kill() -> None:
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            plural,
            field_selector=f"metadata.name={name}",
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=int(timeout_s),
        ):
            if written(event["object"].get("status") or {}):
                operator.kill()
                status.update(event["object"].get("status") or {})
                killed.set()
                stream.stop()

    watcher = threading.Thread(target=watch_and_kill, daemon=True)
    watcher.start()
    change()
    assert killed.wait(timeout_s), f"the operator never wrote the awaited status of {plural} {name}"
    watcher.join(10)
    assert not operator.alive()
    return status


class Strata:
    """TrainingJobs and ResourcePools of one test, and what a user sees of them."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.api_client = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.core = client.CoreV1Api(self.api_client)
        self.pools: list[str] = []
        self.suffix = secrets.token_hex(3)

    def pool(self, name: str, **spec: Any) -> str:
        full = f"{name}-{self.suffix}"
        body = {"apiVersion": api.API_VERSION, "kind": api.RESOURCE_POOL, "metadata": {"name": full},
                "spec": {"maxGPUs": 1000, **spec}}  # fmt: skip
        self.custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, body)
        self.pools.append(full)
        return full

    def submit(self, body: dict[str, Any]) -> str:
        self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS, body)
        return str(body["metadata"]["name"])

    def job(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS, name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.job(name).get("status") or {})

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS, name, {"spec": spec}
        )

    def wait_phase(self, name: str, *phases: str, timeout_s: float = 60) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("phase") in phases else None

        try:
            return eventually(probe, timeout_s, f"TrainingJob {name} to be {' or '.join(phases)}")
        except AssertionError as error:
            raise AssertionError(f"{error}; status now: {self.status(name)}") from None

    def wait_reason(self, name: str, reason: str, timeout_s: float = 60) -> dict[str, Any]:
        """The job's status once its reason is ``reason`` (a phase restated with a new reason, Admitted with
        WaitingForScheduler, is no new phase)."""

        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("reason") == reason else None

        try:
            return eventually(probe, timeout_s, f"TrainingJob {name}'s reason {reason}")
        except AssertionError as error:
            raise AssertionError(f"{error}; status now: {self.status(name)}") from None

    def entered_phase(self, name: str, since: str, phase: str, timeout_s: float = 60) -> dict[str, Any]:
        """The job's status as it first entered ``phase`` after resourceVersion ``since``, from a watch: a phase the
        operator leaves within a second (a gang restarted on an idle cluster) is seen too, where polling may miss it."""
        stream = watch.Watch()
        for event in stream.stream(
            self.custom.list_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            self.namespace,
            api.TRAINING_JOBS,
            field_selector=f"metadata.name={name}",
            resource_version=since,
            timeout_seconds=int(timeout_s),
        ):
            status = dict(event["object"].get("status") or {})
            if status.get("phase") == phase:
                stream.stop()
                return status
        now = self.status(name)
        raise AssertionError(f"TrainingJob {name} did not enter {phase} in {timeout_s:.0f}s; status now: {now}")

    def pods(self, job: str) -> list[Any]:
        selector = f"{api.LABEL_JOB}={job},{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
        items: list[Any] = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return sorted(items, key=lambda p: p.metadata.name)

    def live_pods(self, job: str) -> list[Any]:
        return [p for p in self.pods(job) if p.metadata.deletion_timestamp is None]

    def exit_workers(self, job: str, code: int, only: str | None = None) -> None:
        """What a worker's process would do: exit (kwok turns the annotation into the pod's termination)."""
        names = [p.metadata.name for p in self.live_pods(job) if only is None or p.metadata.name == only]
        annotate_pods(self.core, self.namespace, names, {EXIT_CODE_ANNOTATION: str(code)})

    def report_progress(self, job: str, step: int, checkpoint_step: int) -> None:
        """What a worker reports about its training (the strata.dev/progress contract)."""
        value = ProgressReporter.value(step, checkpoint_step, datetime(2026, 1, 1, tzinfo=UTC))
        names = [p.metadata.name for p in self.live_pods(job)]
        annotate_pods(self.core, self.namespace, names, {api.ANN_PROGRESS: value})

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [e.reason for e in items]

    def cleanup(self) -> None:
        jobs = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS)
        for item in jobs["items"]:
            self._ignore_404(
                self.custom.delete_namespaced_custom_object,
                api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS, item["metadata"]["name"],
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while self._jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in self._jobs():  # no operator left to remove its finalizer: do it as an admin would
            self._ignore_404(
                self.custom.patch_namespaced_custom_object,
                api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS, name, {"metadata": {"finalizers": None}},
            )  # fmt: skip
        selector = f"{api.LABEL_MANAGED_BY}={api.MANAGED_BY}"
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            self._ignore_404(self.core.delete_namespaced_pod, pod.metadata.name, self.namespace, grace_period_seconds=0)
        for pool in self.pools:
            self._ignore_404(self.custom.delete_cluster_custom_object, api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
        deadline = time.monotonic() + 60
        while self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            if time.monotonic() > deadline:
                raise AssertionError("worker pods of the test outlived it (their GPUs would leak into the next test)")
            time.sleep(0.2)

    def _jobs(self) -> list[str]:
        jobs = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.TRAINING_JOBS)
        return [item["metadata"]["name"] for item in jobs["items"]]

    @staticmethod
    def _ignore_404(call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except ApiException as error:
            if error.status != 404:
                raise
