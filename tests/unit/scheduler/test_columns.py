"""The columnar node cache and the array filter and score give exactly what the per-node definitions give, and
the byte route answers exactly as plain JSON does.

``filter_nodes`` and ``score_rows`` (the one filter and the one score every request goes through) are checked
against ``filter_nodes_reference`` and ``score_nodes`` (one node at a time, in ``scheduler_reference``;
``test_filtering`` and ``test_scoring`` pin the product down with exact tables) on random fleets, pods, pins and
forecasts; the columns are checked against a fresh rebuild from the object cache after random add, update and
delete events; the extender with the byte route on is checked against the same extender with it off.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_builders import TEST_CATALOG, a_node, a_pod
from scheduler_reference import ReferenceOutcome, filter_nodes_reference, reference_rows, score_nodes

import strata_api as api
from strata_api.catalog import parse_catalog
from strata_scheduler.columns import RESOURCE_INDEX, NodeColumns, host_json
from strata_scheduler.filtering import FilterOutcome, HoldBack, PinnedGroup, filter_nodes
from strata_scheduler.protocol import priority_list, priority_list_json
from strata_scheduler.scoring import JobPlacement, score_rows
from strata_scheduler.state import ClusterState
from strata_scheduler.views import cost_class, pod_view

pytestmark = pytest.mark.unit

CATALOG = parse_catalog({**TEST_CATALOG, "power": {"zones": {"zone-b": [1.5] * 24}}})
NODE_NAMES = [f"n{i}" for i in range(12)]
PROPERTY = settings(max_examples=100, deadline=None)

node_specs = st.fixed_dictionaries(
    {
        "gpu": st.sampled_from(["H100", "MI300X", None]),
        "count": st.sampled_from([0, 1, 2, 4, 8]),
        "capacity": st.sampled_from(["spot", "reserved", "on-demand", None]),
        "zone": st.sampled_from(["zone-a", "zone-b", None]),
        "price": st.sampled_from([None, "24", "96", "junk"]),
    }
)
pod_specs = st.fixed_dictionaries(
    {
        "node": st.sampled_from([*NODE_NAMES, "elsewhere"]),
        "gpus": st.sampled_from([1, 2, 4, 8]),
        "amd": st.booleans(),
        "job": st.sampled_from(["llm", "other", None]),
        "group": st.sampled_from(["0", "1", None]),
        "priority": st.sampled_from([10, 500]),
        "phase": st.sampled_from(["Running", "Pending", "Succeeded"]),
    }
)


def node_obj(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    builder = a_node(name)
    if spec["gpu"] == "H100":
        builder.h100(spec["count"])
    elif spec["gpu"] == "MI300X":
        builder.mi300x(spec["count"])
    if spec["capacity"]:
        builder.capacity(spec["capacity"])
    if spec["zone"]:
        builder.zone(spec["zone"])
    else:
        builder.without_label(api.NODE_ZONE)
    if spec["price"]:
        builder.price(spec["price"])
    return builder.build()


def pod_obj(name: str, spec: dict[str, Any], bound: bool = True) -> dict[str, Any]:
    builder = a_pod(name).amd(spec["gpus"]) if spec["amd"] else a_pod(name).gpus(spec["gpus"])
    builder.priority(spec["priority"])
    if spec["job"]:
        builder.of_job(spec["job"])
        if spec["group"]:
            builder.tp_group(spec["group"], size=spec.get("tp_size", 8))
    if bound:
        builder.on(spec["node"], spec["phase"])
    return builder.build()


@st.composite
def clusters(draw: st.DrawFn) -> ClusterState:
    state = ClusterState(high_priority=100)
    names = draw(st.lists(st.sampled_from(NODE_NAMES), unique=True, max_size=len(NODE_NAMES)))
    for name in names:
        state.upsert_node(node_obj(name, draw(node_specs)))
    for index, spec in enumerate(draw(st.lists(pod_specs, max_size=10))):
        state.upsert_pod(pod_obj(f"p{index}", spec))
    for index, spec in enumerate(draw(st.lists(pod_specs, max_size=2))):  # unbound, of a gang rule 10 moved for
        waiting = pod_obj(f"w{index}", spec, bound=False)
        gpus = draw(st.sampled_from([1, 4, 8, 16]))
        waiting["metadata"]["annotations"][api.ANN_PLANNED_NODE] = api.PlannedNode(spec["node"], gpus).annotation()
        state.upsert_pod(waiting)
    if draw(st.booleans()):
        pool = {"capacityTypes": draw(st.lists(st.sampled_from(["spot", "reserved", "on-demand"]), max_size=2))}
        pool["gpuTypes"] = draw(st.lists(st.sampled_from(["H100", "MI300X"]), max_size=2))
        state.upsert_pool({"metadata": {"name": "pool"}, "spec": pool})
    return state


@st.composite
def pending_pods(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(pod_specs)
    spec["gpus"] = draw(st.sampled_from([0, 1, 2, 4, 8]))
    spec["tp_size"] = draw(st.sampled_from([1, 4, 8, 16]))
    obj = pod_obj("pending", spec, bound=False) if spec["gpus"] else a_pod("pending").build()
    annotations = obj["metadata"]["annotations"]
    if draw(st.booleans()):
        annotations[api.ANN_GPU_TYPES] = draw(st.sampled_from(["H100", "MI300X", "H100,MI300X"]))
    if draw(st.booleans()):
        annotations[api.ANN_CAPACITY_TYPES] = draw(st.sampled_from(["spot", "reserved", "spot,on-demand"]))
    if draw(st.booleans()):
        annotations[api.ANN_DEFERRABLE] = "true"
    if draw(st.booleans()):
        annotations[api.ANN_PLANNED_CAPACITY_TYPES] = draw(st.sampled_from(["spot", "reserved", "on-demand,reserved"]))
    annotations[api.ANN_CHECKPOINT_INTERVAL] = str(draw(st.sampled_from([600, 86400])))
    annotations[api.ANN_EXPECTED_RUNTIME] = str(draw(st.sampled_from([3600, 172800])))
    if draw(st.booleans()):
        obj["metadata"]["labels"][api.LABEL_POOL] = "pool"
    if draw(st.integers(0, 4)) == 0:  # another profile's pod: the neutral answer
        obj["spec"]["schedulerName"] = "default-scheduler"
    return obj


def request_names(draw: st.DrawFn, min_size: int = 0, max_size: int = 20) -> list[str]:
    return draw(st.lists(st.sampled_from([*NODE_NAMES, "ghost", "n1"]), min_size=min_size, max_size=max_size))


def assert_same_outcome(fast: FilterOutcome, slow: ReferenceOutcome) -> None:
    assert fast.passed == slow.passed
    assert list(fast.failed.items()) == list(slow.failed.items())
    assert list(fast.unresolvable.items()) == list(slow.unresolvable.items())
    assert fast.rejected_by_reason == slow.rejected_by_reason
    assert fast.pin == slow.pin


@PROPERTY
@given(state=clusters(), pod=pending_pods(), data=st.data())
def test_array_filter_matches_the_per_node_filter(state: ClusterState, pod: dict[str, Any], data: Any) -> None:
    names = request_names(data.draw)
    pins: dict[tuple[str, str, str], PinnedGroup] = {}
    for group in data.draw(st.lists(st.sampled_from(["0", "1", "2"]), unique=True, max_size=2)):
        node = data.draw(st.sampled_from([*NODE_NAMES, "ghost"]))
        pins[("team", "llm", group)] = PinnedGroup(node, group_gpus=data.draw(st.sampled_from([4, 8, 16])), pod_gpus=4)
    upper = data.draw(st.dictionaries(st.sampled_from(["H100", "MI300X"]), st.sampled_from([0.0, 7.5, 20.0, 1e9])))
    hold = HoldBack(upper_by_gpu_type=upper)
    view = pod_view(pod)
    with state.reading():
        fast = filter_nodes(view, names, state, hold, pins, cheapest=max)
        slow = filter_nodes_reference(view, names, state, hold, pins, cheapest=max)
    assert_same_outcome(fast, slow)


@PROPERTY
@given(state=clusters(), pod=pending_pods(), data=st.data())
def test_array_filter_matches_the_per_node_filter_on_requests_long_enough_to_sort_sentences(
    state: ClusterState, pod: dict[str, Any], data: Any
) -> None:
    """Over 64 rejections of one kind, the sentences are told apart by sorting keys, not by a dict."""
    names = request_names(data.draw, min_size=65, max_size=200)
    view = pod_view(pod)
    hold = HoldBack(upper_by_gpu_type={})
    with state.reading():
        fast = filter_nodes(view, names, state, hold, {}, cheapest=max)
        slow = filter_nodes_reference(view, names, state, hold, {}, cheapest=max)
    assert_same_outcome(fast, slow)


@PROPERTY
@given(state=clusters(), pod=pending_pods(), hour=st.integers(0, 23), data=st.data())
def test_array_scores_match_the_per_node_scores(state: ClusterState, pod: dict[str, Any], hour: int, data: Any) -> None:
    names = request_names(data.draw)
    view = pod_view(pod)
    job_nodes = dict(state.job_nodes.get(view.job_key, {})) if view.job_key else {}
    placement = JobPlacement(job_nodes, {name: node.zone for name in job_nodes if (node := state.nodes.get(name))})
    expected = score_nodes(CATALOG, view, reference_rows(state, names), placement, hour)
    fast = score_rows(CATALOG, view, state.columns, state.columns.rows(names), placement, hour)
    assert list(zip(names, fast.tolist(), strict=True)) == expected
    hosts = state.columns.host_json[state.columns.rows(names)]
    for position, name in enumerate(names):
        if name not in state.nodes:
            hosts[position] = host_json(name)
    assert priority_list_json(hosts, fast) == priority_list(expected)


def columns_from_scratch(state: ClusterState) -> NodeColumns:
    fresh = NodeColumns()
    for node in state.nodes.values():
        fresh.upsert(node, state.used_gpus.get(node.name))
    return fresh


def assert_columns_match(state: ClusterState) -> None:
    columns, fresh = state.columns, columns_from_scratch(state)
    assert set(columns.index) == set(state.nodes)
    for name, node in state.nodes.items():
        row, other = columns.index[name], fresh.index[name]
        assert columns.names[row] == name
        used = state.used_gpus.get(name, {})
        for resource, column in RESOURCE_INDEX.items():
            assert columns.alloc[row, column] == node.allocatable_gpus.get(resource, 0)
            assert columns.used[row, column] == used.get(resource, 0)
        assert columns.gpu_count[row] == fresh.gpu_count[other] == node.gpu_count
        assert columns.used_own[row] == fresh.used_own[other]
        assert columns.type_reps[columns.type_class[row]].gpu_type == node.gpu_type
        assert columns.type_reps[columns.type_class[row]].capacity_type == node.capacity_type
        assert cost_class(columns.cost_reps[columns.cost_class[row]]) == cost_class(node)
        assert columns.zones[columns.zone[row]] == node.zone
        assert columns.host_json[row] == host_json(name)
        assert orjson.loads(columns.host_json[row] + b"0}") == {"Host": name, "Score": 0}
    free_rows = [row for row, name in enumerate(columns.names) if name is None]
    assert not columns.alloc[free_rows].any()
    assert not columns.used[free_rows].any()


events = st.one_of(
    st.tuples(st.just("node"), st.sampled_from(NODE_NAMES), node_specs),
    st.tuples(st.just("delete-node"), st.sampled_from(NODE_NAMES), st.none()),
    st.tuples(st.just("pod"), st.sampled_from([f"p{i}" for i in range(6)]), pod_specs),
    st.tuples(st.just("delete-pod"), st.sampled_from([f"p{i}" for i in range(6)]), st.none()),
    st.tuples(st.just("relist-pods"), st.just(""), st.none()),
    st.tuples(st.just("relist-nodes"), st.just(""), st.none()),
)


@PROPERTY
@given(st.lists(events, max_size=40))
def test_columns_follow_node_and_pod_events(history: list[tuple[str, str, Any]]) -> None:
    state = ClusterState()
    pods: dict[str, dict[str, Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    for kind, name, spec in history:
        if kind == "node":
            nodes[name] = node_obj(name, spec)
            state.upsert_node(nodes[name])
        elif kind == "delete-node":
            nodes.pop(name, None)
            state.delete_node(name)
        elif kind == "pod":
            pods[name] = pod_obj(name, spec)
            pods[name]["metadata"]["uid"] = name
            state.upsert_pod(pods[name])
        elif kind == "delete-pod":
            pods.pop(name, None)
            state.delete_pod(name)
        elif kind == "relist-pods":
            state.replace_pods(list(pods.values()))
        else:
            state.replace_nodes(list(nodes.values()))
        assert_columns_match(state)


def test_columns_grow_and_reuse_rows_of_deleted_nodes() -> None:
    state = ClusterState()
    for index in range(200):
        state.upsert_node(a_node(f"n{index}").h100().spot().build())
    state.upsert_pod(a_pod("w").gpus(4).on("n150").build())
    assert_columns_match(state)
    row = state.columns.index["n7"]
    state.delete_node("n7")
    state.upsert_node(a_node("new").mi300x(4).reserved().build())
    assert state.columns.index["new"] == row
    assert_columns_match(state)
    rows = state.columns.rows(["n150", "ghost", "new"])
    assert rows.tolist() == [state.columns.index["n150"], -1, row]
    assert state.columns.used_own[rows[0]] == 4


def test_priority_list_json_writes_what_orjson_writes_for_odd_names() -> None:
    names = ['quo"te', "back\\slash", "ünïcode", "", "tab\tname"]
    scores = np.array([0, 10, 3, 7, 1], dtype=np.int64)
    hosts = np.array([host_json(name) for name in names], dtype=object)
    assert priority_list_json(hosts, scores) == priority_list(list(zip(names, scores.tolist(), strict=True)))
    assert priority_list_json(np.array([], dtype=object), np.array([], dtype=np.int64)) == b"[]"


def test_prioritize_after_filter_reuses_rows_only_while_they_are_valid() -> None:
    from scheduler_builders import an_extender

    nodes = [a_node("a").h100().spot(), a_node("b").h100().reserved(), a_node("c").mi300x().spot()]
    extender = an_extender(*nodes)
    pod = a_pod("w").gpus(4).build()
    filtered = orjson.loads(extender.filter(orjson.dumps({"Pod": pod, "NodeNames": ["a", "b", "c", "x"]}))[1])
    assert filtered["NodeNames"] == ["a", "b"]
    second = orjson.dumps({"Pod": pod, "NodeNames": filtered["NodeNames"]})
    expected = an_extender(*nodes).prioritize(second)
    assert extender.prioritize(second) == expected
    # A node leaves and another takes its row between the two calls: rows are looked up again.
    extender.state.delete_node("a")
    extender.state.upsert_node(a_node("d").h100().on_demand().build())
    assert orjson.loads(extender.prioritize(second)[1]) == [{"Host": "a", "Score": 0}, {"Host": "b", "Score": 8}]
    # Another pod, or other nodes, never reuse the rows.
    other = orjson.dumps({"Pod": a_pod("v").gpus(4).build(), "NodeNames": ["b"]})
    assert orjson.loads(extender.prioritize(other)[1]) == [{"Host": "b", "Score": 8}]


def go_body(pod: dict[str, Any], names: list[str]) -> bytes:
    """ExtenderArgs as kube-scheduler's Go encoder writes them (field order, no spaces): the byte route's input."""
    return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})


def other_body(pod: dict[str, Any], names: list[str]) -> bytes:
    """The same arguments in an order the byte route does not read: always decoded as plain JSON."""
    return orjson.dumps({"NodeNames": names, "Pod": pod})


def an_extender_over(state: ClusterState, byte_fast_path: bool = True) -> Any:
    from strata_scheduler.extender import Extender
    from strata_scheduler.forecast_board import ForecastBoard
    from strata_scheduler.metrics import ExtenderMetrics

    state.synced |= {"nodes", "pods"}
    return Extender(state, CATALOG, ForecastBoard(), ExtenderMetrics(state.size), byte_fast_path=byte_fast_path)


def byte_route_reads(extender: Any) -> list[bool]:
    """For each request the extender decodes from now on: whether the byte route read it."""
    taken: list[bool] = []
    decode = extender._decode

    def spy(verb: str, body: bytes) -> Any:
        request = decode(verb, body)
        taken.append(request.args is None)
        return request

    extender._decode = spy
    return taken


@PROPERTY
@given(state=clusters(), pod=pending_pods(), data=st.data())
def test_the_byte_route_answers_byte_for_byte_as_plain_json(
    state: ClusterState, pod: dict[str, Any], data: Any
) -> None:
    """Switch on and switch off, through the same filter and score: the same bytes for the same body, and for
    the body in another field order."""
    names = request_names(data.draw)
    fast = an_extender_over(state)
    plain, other_order = an_extender_over(state, byte_fast_path=False), an_extender_over(state, byte_fast_path=False)
    taken, plain_taken = byte_route_reads(fast), byte_route_reads(plain)
    status, answer = fast.filter(go_body(pod, names))
    assert (status, answer) == plain.filter(go_body(pod, names)) == other_order.filter(other_body(pod, names))
    assert taken == [len(set(names)) == len(names) and set(names) <= set(state.nodes)]
    assert plain_taken == [False]
    passed = orjson.loads(answer)["NodeNames"]
    for second in (passed, names, names[::-1]):
        taken.clear()
        answer = fast.prioritize(go_body(pod, second))
        assert answer == plain.prioritize(go_body(pod, second)) == other_order.prioritize(other_body(pod, second))
        assert taken == [len(set(second)) == len(second) and set(second) <= set(state.nodes)]
