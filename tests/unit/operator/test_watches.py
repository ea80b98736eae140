"""The operator's pod and node caches (runtime.watches): what a watch event does to the indices admission and
daemons read."""

from __future__ import annotations

from typing import Any

import strata_api as api
from strata_operator.runtime.watches import Index, gpu_usage_entry, node_entry, worker_pod_entry


def pod(
    name: str,
    *,
    uid: str | None = None,
    job: str | None = "train",
    node: str | None = None,
    gpus: int = 1,
    phase: str = "Pending",
    managed: bool = True,
) -> dict[str, Any]:
    labels = {api.LABEL_WORKER_INDEX: "0", api.LABEL_ATTEMPT: "1"}
    if job:
        labels[api.LABEL_JOB] = job
    if managed:
        labels[api.LABEL_MANAGED_BY] = api.MANAGED_BY
    spec: dict[str, Any] = {"containers": [{"name": "w", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": name, "namespace": "team", "uid": uid or name, "labels": labels},
        "spec": spec,
        "status": {"phase": phase},
    }


def test_a_pod_moves_between_keys_when_it_changes_and_leaves_when_deleted() -> None:
    usage: Index[int] = Index(gpu_usage_entry)
    assert usage.upsert("u1", pod("a", gpus=2)) == ()  # not bound: holds nothing
    assert usage.upsert("u1", pod("a", gpus=2, node="n1")) == ("n1",)
    usage.upsert("u2", pod("b", gpus=4, node="n1"))
    assert sorted(usage["n1"]) == [2, 4]
    assert usage.upsert("u1", pod("a", gpus=2, node="n1", phase="Succeeded")) == ("n1",)  # finished: GPUs free
    assert list(usage["n1"]) == [4]
    assert usage.remove("u2") == ("n1",)
    assert "n1" not in usage
    assert len(usage) == 0


def test_a_fresh_list_swaps_the_whole_index_and_reports_every_key_it_touched() -> None:
    pods: Index[Any] = Index(worker_pod_entry)
    pods.upsert("u1", pod("train-worker-0", uid="u1"))
    fresh = pods.empty()  # a re-list fills a fresh index page by page, then swaps it in
    fresh.upsert("u9", pod("other-worker-0", uid="u9", job="other"))
    touched = pods.take(fresh)
    assert touched == {"team/train", "team/other"}
    assert list(pods) == ["team/other"]
    assert [p.name for p in pods["team/other"]] == ["other-worker-0"]
    pods.remove("u1")  # an object the fresh list no longer has is forgotten, not resurrected
    assert list(pods) == ["team/other"]


def test_only_strata_managed_worker_pods_are_indexed_by_job() -> None:
    assert worker_pod_entry(pod("x", managed=False)) is None
    assert worker_pod_entry(pod("x", job=None)) is None
    entry = worker_pod_entry(pod("train-worker-0", node="n1"))
    assert entry is not None
    assert list(entry) == ["team/train"]
    assert entry["team/train"].node == "n1"
    assert entry["team/train"].attempt == 1


def test_nodes_are_indexed_by_name() -> None:
    body = {
        "metadata": {"name": "h0", "labels": {api.NVIDIA_PRODUCT: "NVIDIA-H100-80GB-HBM3"}},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    nodes: Index[Any] = Index(node_entry)
    nodes.upsert("n-uid", body)
    (node,) = nodes["h0"]
    assert node.name == "h0"
    assert node.schedulable
    assert node.allocatable_gpus == 8


def test_a_node_offers_admission_only_the_gpus_of_its_own_type() -> None:
    labels = {api.NVIDIA_PRODUCT: "NVIDIA-H100-80GB-HBM3", api.NODE_CAPACITY_TYPE: "spot"}
    body = {"metadata": {"name": "h0", "labels": labels}, "status": {"allocatable": {"amd.com/gpu": "8"}}}
    (node,) = node_entry(body).values()
    assert node.gpu_type == api.GPUType.H100
    assert node.allocatable_gpus == 0  # labelled H100, advertising AMD GPUs: nothing admission can use
    assert node.capacity_type == "spot"
    assert not node.schedulable  # not Ready
