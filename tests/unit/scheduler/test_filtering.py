"""Every node the filter rejects gets the reason a user will read in the pod's events."""

from __future__ import annotations

from typing import Any

import pytest
from scheduler_builders import a_node, a_pod

from strata_scheduler.filtering import FilterOutcome, HoldBack, PinnedGroup, filter_nodes
from strata_scheduler.state import ClusterState
from strata_scheduler.views import pod_view

pytestmark = pytest.mark.unit

NO_HOLD = HoldBack(upper_by_gpu_type={})


def cluster(*objects: Any) -> ClusterState:
    state = ClusterState(high_priority=100)
    for builder in objects:
        obj = builder.build()
        (state.upsert_node if "status" in obj and "allocatable" in obj["status"] else state.upsert_pod)(obj)
    return state


def run(pod: Any, state: ClusterState, names: list[str], hold: HoldBack = NO_HOLD, pins: Any = None) -> FilterOutcome:
    with state.reading():
        return filter_nodes(pod_view(pod.build()), names, state, hold, pins or {}, cheapest=min)


def test_reasons_for_type_capacity_and_free_gpus() -> None:
    state = cluster(
        a_node("h-spot").h100().spot(),
        a_node("h-res").h100().reserved(),
        a_node("m-spot").mi300x().spot(),
        a_node("h-busy").h100().spot(),
        a_node("cpu").instance("m7i.8xlarge").spot(),
        a_node("unlabelled").h100(),
        a_pod("other").gpus(6).on("h-busy"),
        a_pod("finished").gpus(8).on("h-spot", phase="Succeeded"),
    )
    pod = a_pod().gpus(4).accepts("H100").capacity_types("spot")
    names = ["h-spot", "h-res", "m-spot", "h-busy", "cpu", "unlabelled", "ghost"]
    outcome = run(pod, state, names)
    assert outcome.passed == ["h-spot"]
    assert outcome.unresolvable == {
        "h-res": "job and pool allow capacity types spot, node is reserved",
        "m-spot": "job accepts GPU types H100, node has MI300X",
        "cpu": "job accepts GPU types H100, node has no GPU type label",
        "unlabelled": "job and pool allow capacity types spot, node has no karpenter.sh/capacity-type label",
    }
    assert outcome.failed == {
        "h-busy": "pod needs 4 nvidia.com/gpu, node has 2 free of 8",
        "ghost": "node is not in the Strata extender's cache yet; it will retry",
    }
    assert outcome.rejected_by_reason == {"capacity_type": 2, "gpu_type": 2, "free_gpus": 1, "unknown_node": 1}


def test_pod_without_strata_annotations_only_needs_free_gpus_of_its_resource() -> None:
    state = cluster(a_node("h").h100().reserved(), a_node("m").mi300x().spot(), a_node("zero").h100(count=0).spot())
    outcome = run(a_pod().amd(8), state, ["h", "m", "zero"])
    assert outcome.passed == ["m"]
    assert outcome.unresolvable == {
        "h": "pod needs 8 amd.com/gpu, node has 0 allocatable",
        "zero": "pod needs 8 amd.com/gpu, node has 0 allocatable",
    }
    assert not outcome.failed


def test_nodes_whose_allocatable_gpus_can_never_fit_are_unresolvable_and_busy_ones_are_not() -> None:
    """kube-scheduler's preemption skips ``FailedAndUnresolvableNodes``: evicting pods from a CPU node, another
    vendor's node or a node with fewer GPUs than the request never makes room, and a full node may."""
    state = cluster(
        a_node("small").h100(count=4).spot(),
        a_node("cpu").instance("m7i.8xlarge").spot(),
        a_node("amd").mi300x().spot(),
        a_node("full").h100().spot(),
        a_node("free").h100().spot(),
        a_pod("other").gpus(8).on("full"),
    )
    outcome = run(a_pod().gpus(8), state, ["small", "cpu", "amd", "full", "free"])
    assert outcome.passed == ["free"]
    assert outcome.unresolvable == {
        "small": "pod needs 8 nvidia.com/gpu, node has 4 allocatable",
        "cpu": "pod needs 8 nvidia.com/gpu, node has 0 allocatable",
        "amd": "pod needs 8 nvidia.com/gpu, node has 0 allocatable",
    }
    assert outcome.failed == {"full": "pod needs 8 nvidia.com/gpu, node has 0 free of 8"}
    assert outcome.rejected_by_reason == {"gpu_allocatable": 3, "free_gpus": 1}


def test_a_tensor_parallel_group_never_fits_a_node_with_fewer_gpus_than_the_group() -> None:
    state = cluster(a_node("small").h100(count=4).spot(), a_node("big").h100().spot())
    outcome = run(a_pod().gpus(4).of_job("llm").tp_group("0", size=8), state, ["small", "big"])
    assert outcome.passed == ["big"]
    assert outcome.unresolvable == {
        "small": "tensor-parallel group 0 of job team/llm needs 8 GPUs on one node, node has 4 allocatable"
    }


def test_pod_without_gpus_passes_everything() -> None:
    outcome = run(a_pod(), cluster(), ["anything", "ghost"])
    assert outcome.passed == ["anything", "ghost"]
    assert not outcome.failed


def test_pool_narrows_what_the_job_allows() -> None:
    state = cluster(a_node("h-spot").h100().spot(), a_node("h-res").h100().reserved())
    state.upsert_pool({"metadata": {"name": "batch"}, "spec": {"capacityTypes": ["reserved"]}})
    outcome = run(a_pod().gpus(8).pool("batch").capacity_types("spot,reserved"), state, ["h-spot", "h-res"])
    assert outcome.passed == ["h-res"]
    assert outcome.unresolvable == {"h-spot": "job and pool allow capacity types reserved, node is spot"}


def test_tensor_parallel_group_follows_its_first_bound_pod() -> None:
    state = cluster(
        a_node("n1").h100(),
        a_node("n2").h100(),
        a_pod("w0").gpus(4).of_job("llm").tp_group("0", size=8).on("n2"),
    )
    outcome = run(a_pod("w1").gpus(4).of_job("llm").tp_group("0", size=8), state, ["n1", "n2"])
    assert outcome.passed == ["n2"]
    assert outcome.unresolvable == {
        "n1": "tensor-parallel group 0 of job team/llm runs on node n2; it never spans nodes"
    }


def test_unplaced_group_needs_room_for_the_whole_group_and_is_pinned_to_one_node() -> None:
    state = cluster(
        a_node("small").h100(),
        a_node("n1").h100(),
        a_node("n2").h100(),
        a_pod("squatter").gpus(4).on("small"),
    )
    outcome = run(a_pod("w0").gpus(4).of_job("llm").tp_group("1", size=8), state, ["small", "n2", "n1"])
    assert outcome.passed == ["n1"]
    assert outcome.failed == {
        "small": "tensor-parallel group 1 of job team/llm needs 8 GPUs on one node, node has 4 free"
    }
    assert outcome.unresolvable == {"n2": "tensor-parallel group 1 of job team/llm is being placed on node n1"}
    assert outcome.pin == (("team", "llm", "1"), PinnedGroup("n1", group_gpus=8, pod_gpus=4))
    # The next pod of the group, scheduled before the first binding is seen, goes to the same node.
    pins = dict([outcome.pin])
    follow = run(a_pod("w1").gpus(4).of_job("llm").tp_group("1", size=8), state, ["n1", "n2"], pins=pins)
    assert follow.passed == ["n1"]
    # Another group, also scheduled before that binding is seen, does not see n1's GPUs as free.
    other = run(a_pod("v0").gpus(4).of_job("llm").tp_group("2", size=8), state, ["n1", "n2"], pins=pins)
    assert other.passed == ["n2"]
    held = "pod needs 4 nvidia.com/gpu, node has 0 free of 8 (8 kept for a gang being placed there)"
    assert other.failed == {"n1": held}


def test_pinned_group_keeps_only_the_gpus_its_unbound_pods_need() -> None:
    state = cluster(a_node("n1").h100(), a_pod("w0").gpus(4).of_job("llm").tp_group("1", size=8).on("n1"))
    pins = {("team", "llm", "1"): PinnedGroup("n1", group_gpus=8, pod_gpus=4)}
    # 4 GPUs bound to the group, 4 kept for its second pod: nothing left for a stranger.
    assert run(a_pod("x").gpus(1), state, ["n1"], pins=pins).failed == {
        "n1": "pod needs 1 nvidia.com/gpu, node has 0 free of 8 (4 kept for a gang being placed there)"
    }


def test_a_node_emptied_for_a_gang_keeps_its_gpus_for_it_until_its_pods_are_bound_there() -> None:
    """Admission moved a 1-GPU job off n1 for an 8-GPU gang (rule 10). While the moved job's pod terminates and the
    gang's pod waits, no other pod takes n1's GPUs (kube-scheduler knows nothing of admission's count); the
    gang's own pod is kept from nothing and lands there once the GPUs are free."""
    moving = a_pod("moved").gpus(1).of_job("small").on("n1")
    gang = a_pod("gang-0").gpus(8).of_job("gang").tp_group("0", size=8).planned_node("n1", 8)
    busy = a_pod("busy").gpus(8).on("n2")
    state = cluster(a_node("n1").h100(), a_node("n2").h100(), busy, moving, gang)

    stranger = run(a_pod("stranger").gpus(1).of_job("other"), state, ["n1", "n2"])
    assert stranger.passed == []
    kept = "pod needs 1 nvidia.com/gpu, node has 0 free of 8 (8 kept for a gang being placed there)"
    assert stranger.failed["n1"] == kept
    assert run(gang, state, ["n1", "n2"]).passed == []  # 7 free: the moved job's pod is still there

    state.delete_pod(moving.build()["metadata"]["uid"])
    assert run(gang, state, ["n1", "n2"]).passed == ["n1"]
    assert run(a_pod("stranger").gpus(1).of_job("other"), state, ["n1"]).passed == []

    state.upsert_pod(gang.on("n1").build())  # bound: nothing is kept any more
    state.delete_pod(busy.build()["metadata"]["uid"])
    assert run(a_pod("stranger").gpus(1).of_job("other"), state, ["n1", "n2"]).passed == ["n2"]


def test_a_gang_keeps_on_its_emptied_node_only_the_gpus_its_unbound_pods_need() -> None:
    """Two 4-GPU workers counted on n1: one bound there, one waiting; 4 GPUs stay kept, the other 4 are free."""
    bound = a_pod("g-0").gpus(4).of_job("gang").planned_node("n1", 8).on("n1")
    waiting = a_pod("g-1").gpus(4).of_job("gang").planned_node("n1", 8)
    state = cluster(a_node("n1").h100(), bound, waiting)
    assert run(a_pod("stranger").gpus(4).of_job("other"), state, ["n1"]).failed == {
        "n1": "pod needs 4 nvidia.com/gpu, node has 0 free of 8 (4 kept for a gang being placed there)"
    }
    assert run(waiting, state, ["n1"]).passed == ["n1"]


def test_a_restarted_gang_is_not_pulled_to_the_old_attempts_node() -> None:
    old = a_pod("w0-old").gpus(4).of_job("llm").tp_group("0", size=8).on("n1", phase="Running")
    old.obj["metadata"]["labels"]["strata.dev/attempt"] = "1"  # still terminating after the restart
    state = cluster(a_node("n1").h100(), a_node("n2").h100(), old)
    new = a_pod("w0").gpus(4).of_job("llm").tp_group("0", size=8)
    new.obj["metadata"]["labels"]["strata.dev/attempt"] = "2"
    outcome = run(new, state, ["n1", "n2"])
    assert outcome.passed == ["n2"]
    assert outcome.failed == {"n1": "tensor-parallel group 0 of job team/llm needs 8 GPUs on one node, node has 4 free"}


def test_group_of_one_pod_is_not_pinned() -> None:
    state = cluster(a_node("n1").h100(), a_node("n2").h100())
    outcome = run(a_pod().gpus(8).of_job("llm").tp_group("0", size=8), state, ["n1", "n2"])
    assert outcome.passed == ["n1", "n2"]
    assert outcome.pin is None


def test_reserved_gpus_are_held_for_forecast_high_priority_demand() -> None:
    state = cluster(
        a_node("r1").h100().reserved(),
        a_node("r2").h100().reserved(),
        a_node("r3").h100().reserved(),
        a_node("s1").h100().spot(),
        a_pod("vip").gpus(8).priority(500).on("r1"),
    )
    # 24 reserved GPUs, 8 used by high priority; forecast says high priority will want up to 20.
    hold = HoldBack(upper_by_gpu_type={"H100": 19.2})
    low = run(a_pod().gpus(8), state, ["r2", "r3", "s1"], hold)
    assert low.passed == ["s1"]
    reason = (
        "reserved H100 GPUs are held for forecast high-priority demand (up to 19 GPUs in 15 min, 80% band): "
        "12 must stay free, this pod would leave 8"
    )
    assert low.failed == {"r2": reason, "r3": reason}
    assert low.rejected_by_reason == {"reserved_holdback": 2}
    high = run(a_pod().gpus(8).priority(500), state, ["r2", "r3", "s1"], hold)
    assert high.passed == ["r2", "r3", "s1"]
    deferrable = run(a_pod().gpus(8).priority(500).annotate("strata.dev/deferrable", "true"), state, ["r2"], hold)
    assert deferrable.passed == []
    small_forecast = run(a_pod().gpus(8), state, ["r2"], HoldBack(upper_by_gpu_type={"H100": 12}))
    assert small_forecast.passed == ["r2"]


def test_terminated_and_deleted_pods_free_their_gpus() -> None:
    state = cluster(a_node("n").h100(), a_pod("done").gpus(8).on("n", phase="Failed"))
    busy = a_pod("busy").gpus(8).on("n").build()
    state.upsert_pod(busy)
    assert run(a_pod().gpus(8), state, ["n"]).passed == []
    state.delete_pod(busy["metadata"]["uid"])
    assert run(a_pod().gpus(8), state, ["n"]).passed == ["n"]
    assert state.used_gpus == {}
    assert state.tp_groups == {}
