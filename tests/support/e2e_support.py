"""Test support for the end-to-end tier: the installed release, the chart values that point it at locally built
images, and the objects a test applies (a CPU pool, a CPU TrainingJob, a checkpoint volume).

Tests import it as ``e2e_support`` (``tests/conftest.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster_support import ClusterHandle, eventually

import strata_api as api
from strata_dev.volumes import host_path_claim

CHART_IMAGES = {"operator": "operator", "extender": "scheduler", "scheduler": "kube-scheduler", "serving": "serving"}
"""The chart's component (its ``<component>.image`` values) -> the image `make images` builds for it."""
TERMINAL = (api.Phase.SUCCEEDED.value, api.Phase.FAILED.value)


@dataclass
class Strata:
    """An installed release and where its jobs' workers run."""

    handle: ClusterHandle
    release: str
    namespace: str
    workloads_image: str
    node_selector: dict[str, str]
    """Labels of the nodes that run containers (the local real node; empty on a cluster of only real nodes)."""
    volumes_dir: Path | None
    """A folder on the node for hostPath checkpoint volumes; None: claims use the cluster's default StorageClass."""

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.handle.kubectl(*args, check=check, input=input)

    def get(self, *args: str) -> dict[str, Any]:
        out = self.kubectl("get", *args, "-o", "json")
        return dict(json.loads(out))

    def apply(self, body: Mapping[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(body))

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.get("trainingjob", name, "-n", namespace)

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.job(namespace, name).get("status") or {})

    def wait_for_phase(self, namespace: str, name: str, phases: tuple[str, ...], timeout_s: float) -> dict[str, Any]:
        """The job's status once its phase is one of ``phases``; a terminal phase not asked for fails at once."""

        def reached() -> dict[str, Any] | None:
            status = self.status(namespace, name)
            phase = status.get("phase")
            if phase in phases:
                return status
            if phase in TERMINAL:
                raise AssertionError(
                    f"{namespace}/{name} is {phase}, not {phases}: {status}\n{self.describe(namespace)}"
                )
            return None

        try:
            return eventually(reached, timeout_s, f"{namespace}/{name} to be {' or '.join(phases)}")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.describe(namespace)}") from None

    def describe(self, namespace: str) -> str:
        """What a failed test prints: the namespace's jobs, pods and events, and the workers' last log lines."""
        parts = [
            self.kubectl(
                "get", "trainingjobs,inferenceservices,deployments,pods,pvc", "-n", namespace, "-o", "wide", check=False
            ),
            self.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False)[-4000:],
        ]
        for line in self.kubectl("get", "pods", "-n", namespace, "-o", "name", check=False).split():
            parts.append(f"--- {line}\n" + self.kubectl("logs", line, "-n", namespace, "--tail=15", check=False))
        return "\n".join(parts)

    def checkpoint_claim(self, namespace: str, size: str = "1Gi") -> str:
        """A ReadWriteOnce claim for a job's checkpoints: a hostPath volume in this session's folder on the local
        node, or a claim on the cluster's default StorageClass (kind's local-path provisioner)."""
        name = f"checkpoints-{secrets.token_hex(3)}"
        if self.volumes_dir is None:
            self.apply(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
                }
            )
            return name
        folder = self.volumes_dir / f"{namespace}-{name}"
        folder.mkdir(mode=0o777)
        folder.chmod(0o777)
        for manifest in host_path_claim(namespace, name, str(folder), size):
            self.apply(manifest)
        return name

    @contextlib.contextmanager
    def claim_of_a_missing_folder(self, namespace: str) -> Iterator[str]:
        """A claim bound in advance to a hostPath volume whose folder no node has: a pod that mounts it is placed, and
        the kubelet cannot mount it (a ``FailedMount`` Event, the container waiting as ``ContainerCreating``). Any
        cluster, kind's too: a volume bound in advance needs no provisioner. The volume is deleted on exit."""
        claim = f"missing-{secrets.token_hex(3)}"
        volume, claimed = host_path_claim(namespace, claim, f"/nonexistent-strata-{secrets.token_hex(4)}")
        self.apply(volume)
        try:
            self.apply(claimed)
            yield claim
        finally:
            self.kubectl("delete", "persistentvolume", volume["metadata"]["name"], "--wait=false", check=False)


def install_values(refs: Mapping[str, str], node_selector: Mapping[str, str]) -> list[str]:
    """``helm install`` flags for images already on the node (``refs``: image name -> reference), one operator
    replica, and the components placed by ``node_selector``: the values .github/workflows/e2e.yaml sets too."""
    flags = ["--set", "operator.replicas=1", "--set", "imagePullPolicy=Never"]
    for component, image in CHART_IMAGES.items():
        repository, tag = refs[image].rsplit(":", 1)
        flags += ["--set", f"{component}.image.repository={repository}", "--set-string", f"{component}.image.tag={tag}"]
    for label, value in node_selector.items():
        flags += ["--set-string", f"nodeSelector.{label.replace('.', chr(92) + '.')}={value}"]
    return flags


def wait_for_release(strata: Strata, timeout_s: float = 240) -> None:
    """Every component of the release has a ready container (readiness probes pass in a real container now)."""
    workloads = [("statefulset", "operator"), ("deployment", "extender"), ("deployment", "scheduler")]

    def ready() -> bool:
        for kind, component in workloads:
            status = strata.get(kind, f"{strata.release}-{component}", "-n", strata.namespace).get("status", {})
            if not status.get("readyReplicas"):
                return False
        return True

    try:
        eventually(ready, timeout_s, f"release {strata.namespace}/{strata.release} to be ready")
    except AssertionError as error:
        pods = strata.kubectl("get", "pods", "-n", strata.namespace, "-o", "wide", check=False)
        events = strata.kubectl("get", "events", "-n", strata.namespace, check=False)
        raise AssertionError(f"{error}\n{pods}\n{events}") from None


def a_cpu_pool(name: str, max_cpus: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.RESOURCE_POOL,
        "metadata": {"name": name},
        "spec": {
            "priority": 50,
            "maxGPUs": 0,
            "maxCPUs": max_cpus,
            "capacityTypes": ["on-demand", "reserved"],
            "preemptible": False,
        },
    }


def a_cpu_job(
    strata: Strata,
    name: str,
    pool: str,
    *,
    claim: str | None = None,
    steps: int = 60,
    every: int = 10,
    data: int = 2,
    pipeline: int = 1,
    preset: str = "debug",
    cpu: str = "500m",
    memory: str = "1Gi",
    backoff_limit: int = 2,
    keep: int = 3,
) -> dict[str, Any]:
    """A CPU TrainingJob of one process per worker on the nodes that run containers."""
    workers = data * pipeline
    micro = 2
    checkpoint: dict[str, Any] = {"intervalSteps": every, "keep": keep}
    if claim is not None:
        checkpoint |= {"persistentVolumeClaim": claim, "path": "/checkpoints"}
    resources: dict[str, Any] = {"gpuType": "CPU", "workers": workers, "cpuPerWorker": cpu, "memoryPerWorker": memory}
    if strata.node_selector:
        resources["nodeSelector"] = strata.node_selector
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": name},
        "spec": {
            "pool": pool,
            "backoffLimit": backoff_limit,
            "workload": {"image": strata.workloads_image, "imagePullPolicy": "IfNotPresent", "preset": preset},
            "parallelism": {"data": data, "pipeline": pipeline, **({"microBatches": 2} if pipeline > 1 else {})},
            "training": {
                "globalBatchSize": micro * data * 2,
                "microBatchSize": micro,
                "steps": steps,
                "precision": "fp32",
                "learningRate": 3e-3,  # ten times the default: the loss falls visibly within a few dozen steps
            },
            "checkpoint": checkpoint,
            "resources": resources,
        },
    }


def initial_loss() -> float:
    """Cross-entropy of a uniform guess over the byte vocabulary: where an untrained model's loss starts."""
    return math.log(256)
