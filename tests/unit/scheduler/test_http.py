"""The extender's HTTP API as kube-scheduler sees it: exact field names, probes, and no 5xx whatever it is sent.

The real server on a loopback port runs on an event loop in a helper thread, so hypothesis (which drives plain
functions) can throw thousands of requests at it, through aiohttp's client, without a cluster.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_builders import a_node, a_pod, an_extender

import strata_api as api
from strata_scheduler.extender import Extender
from strata_scheduler.server import ExtenderServer
from strata_scheduler.settings import Settings

pytestmark = pytest.mark.unit

MAX_BODY = 64 * 1024


class LiveServer:
    def __init__(self, extender: Extender, settings: Settings | None = None) -> None:
        self.extender = extender
        self.settings = settings or Settings(max_body_bytes=MAX_BODY)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="extender-test-loop", daemon=True)
        self.thread.start()
        self.server, self.client = self._call(self._start())

    async def _start(self) -> tuple[ExtenderServer, aiohttp.ClientSession]:
        server = await ExtenderServer(self.extender, self.settings).start("127.0.0.1", 0)
        return server, aiohttp.ClientSession(f"http://127.0.0.1:{server.port}")

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        async def go() -> tuple[int, bytes]:
            async with self.client.request(method, path, data=body) as response:
                return response.status, await response.read()

        result: tuple[int, bytes] = self._call(go())
        return result

    def post(self, path: str, document: Any) -> tuple[int, Any]:
        status, body = self.request("POST", path, orjson.dumps(document))
        return status, orjson.loads(body) if status == 200 else body.decode()

    def close(self) -> None:
        self._call(self.client.close())
        self._call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


FLEET = (
    a_node("h100-spot").h100().spot(),
    a_node("h100-res").h100().reserved(),
    a_node("mi-spot").mi300x().spot(),
    a_node("cpu").instance("m7i.8xlarge").on_demand(),
    a_pod("busy").gpus(8).on("h100-res"),
)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer(an_extender(*FLEET))
    yield live
    live.close()


def test_filter_speaks_the_extender_v1_field_names(server: LiveServer) -> None:
    pod = a_pod().gpus(8).capacity_types("spot").build()
    status, body = server.post("/filter", {"Pod": pod, "NodeNames": ["h100-spot", "h100-res", "mi-spot", "cpu"]})
    assert status == 200
    assert body == {
        "Nodes": None,
        "NodeNames": ["h100-spot"],
        "FailedNodes": {},
        "FailedAndUnresolvableNodes": {
            "h100-res": "job and pool allow capacity types spot, node is reserved",
            "mi-spot": "pod needs 8 nvidia.com/gpu, node has 0 allocatable",
            "cpu": "job and pool allow capacity types spot, node is on-demand",
        },
        "Error": "",
    }


def test_prioritize_returns_a_host_priority_list(server: LiveServer) -> None:
    pod = a_pod().gpus(4).checkpoint_every(1800).runtime(36000).build()
    status, body = server.post("/prioritize", {"Pod": pod, "NodeNames": ["h100-spot", "mi-spot", "ghost"]})
    assert status == 200
    assert body == [{"Host": "h100-spot", "Score": 7}, {"Host": "mi-spot", "Score": 8}, {"Host": "ghost", "Score": 0}]


def test_pods_of_other_schedulers_get_the_neutral_answer(server: LiveServer) -> None:
    pod = a_pod().gpus(8).capacity_types("spot").build()
    pod["spec"]["schedulerName"] = "default-scheduler"
    names = ["h100-res", "cpu", "ghost"]
    status, body = server.post("/filter", {"Pod": pod, "NodeNames": names})
    assert (status, body["NodeNames"], body["FailedNodes"], body["FailedAndUnresolvableNodes"]) == (200, names, {}, {})
    status, scores = server.post("/prioritize", {"Pod": pod, "NodeNames": names})
    assert scores == [{"Host": name, "Score": 0} for name in names]


def test_quote_recommends_the_gpu_type_with_the_cheapest_unit_of_work(server: LiveServer) -> None:
    template = a_pod().gpus(8).capacity_types("spot").checkpoint_every(1800).runtime(36000)
    status, body = server.post("/quote", {"Pod": template.build()})
    assert status == 200
    assert body["recommended"] == "MI300X"
    assert [(o["gpuType"], o["node"], o["capacityType"]) for o in body["options"]] == [
        ("MI300X", "mi-spot", "spot"),
        ("H100", "h100-spot", "spot"),
    ]
    assert body["options"][0]["costPerUnitWork"] == pytest.approx(3 / 0.9 * 1.0254219, rel=1e-6)
    status, body = server.post("/quote", {"Pod": template.throughput("MI300X=0.5").build()})
    assert body["recommended"] == "H100"
    status, body = server.post("/quote", {"Pod": a_pod().gpus(8).accepts("MI300X").capacity_types("reserved").build()})
    assert body == {"recommended": None, "options": [], "kinds": []}


def test_quote_answers_every_node_kind_with_room_cheapest_unit_of_work_first() -> None:
    """Node kinds (GPU type x capacity type) in cost order, each at its cheapest node with room: a free reserved
    GPU costs 0 (MI300X's commitment 5 / 0.9 below H100's 6), spot next with its reclaim slowdown (x1.0254 at
    30-minute checkpoints), on-demand last. A kind whose nodes are full is not quoted. ``options`` (one per type,
    its cheapest kind) stays for an operator that predates ``kinds``."""
    six = [
        (a_node(f"h100-{capacity}").h100() if gpu == "H100" else a_node(f"mi-{capacity}").mi300x()).capacity(capacity)
        for gpu in ("H100", "MI300X")
        for capacity in ("reserved", "spot", "on-demand")
    ]
    live = LiveServer(an_extender(*six, a_pod("busy").amd(8).on("mi-reserved")))
    try:
        status, body = live.post("/quote", {"Pod": a_pod().gpus(4).checkpoint_every(1800).runtime(36000).build()})
        assert status == 200
        assert [(k["gpuType"], k["capacityType"], k["node"]) for k in body["kinds"]] == [
            ("H100", "reserved", "h100-reserved"),  # mi-reserved is full
            ("MI300X", "spot", "mi-spot"),
            ("H100", "spot", "h100-spot"),
            ("MI300X", "on-demand", "mi-on-demand"),
            ("H100", "on-demand", "h100-on-demand"),
        ]
        assert [k["costPerUnitWork"] for k in body["kinds"]] == pytest.approx(
            [0.0, 3 / 0.9 * 1.0254219, 4 * 1.0254219, 8 / 0.9, 10.0], rel=1e-6
        )
        assert [(o["gpuType"], o["capacityType"]) for o in body["options"]] == [
            ("H100", "reserved"),
            ("MI300X", "spot"),
        ]
        assert body["recommended"] == "H100"
    finally:
        live.close()


def test_quote_recommends_a_free_reserved_gpu_first_and_the_lower_commitment_rate_among_reserved_types() -> None:
    """A free reserved GPU costs 0 (paid whether used or not): it beats spot; between two reserved types, both 0,
    the lower commitment per unit of work wins (MI300X 5 / 0.9 = 5.6 against H100 6), not the alphabet."""
    live = LiveServer(
        an_extender(a_node("h100-res").h100().reserved(), a_node("mi-res").mi300x().reserved(), *FLEET[:1], FLEET[2])
    )
    try:
        status, body = live.post("/quote", {"Pod": a_pod().gpus(8).checkpoint_every(1800).runtime(36000).build()})
        assert status == 200
        assert [(o["gpuType"], o["node"], o["costPerUnitWork"]) for o in body["options"]] == [
            ("MI300X", "mi-res", 0.0),
            ("H100", "h100-res", 0.0),
        ]
        assert body["options"][0]["listCostPerUnitWork"] == pytest.approx(5 / 0.9, rel=1e-6)
        assert body["recommended"] == "MI300X"
    finally:
        live.close()


def test_keys_match_case_insensitively_like_go(server: LiveServer) -> None:
    status, body = server.post("/filter", {"pod": a_pod().gpus(8).build(), "nodenames": ["h100-spot"]})
    assert status == 200
    assert body["NodeNames"] == ["h100-spot"]


def test_full_node_lists_are_echoed_when_the_scheduler_is_not_node_cache_capable(server: LiveServer) -> None:
    nodes = {"items": [{"metadata": {"name": "h100-spot"}}, {"metadata": {"name": "cpu"}}]}
    status, body = server.post("/filter", {"Pod": a_pod().gpus(8).build(), "Nodes": nodes})
    assert status == 200
    assert body["NodeNames"] == ["h100-spot"]
    assert body["Nodes"] == {"items": [{"metadata": {"name": "h100-spot"}}]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"Pod": {', "request body is not valid JSON"),
        (b"[]", "ExtenderArgs must be a JSON object"),
        (b'{"NodeNames": []}', "ExtenderArgs.Pod must be a Pod object"),
        (b'{"Pod": {}, "NodeNames": "h100-spot"}', "ExtenderArgs.NodeNames must be a list of node names"),
        (b'{"Pod": {}, "Nodes": {"items": [{}]}}', "every node in ExtenderArgs.Nodes needs metadata.name"),
    ],
)
def test_malformed_requests_get_400_with_a_message(server: LiveServer, body: bytes, message: str) -> None:
    for verb in ("/filter", "/prioritize"):
        status, answer = server.request("POST", verb, body)
        assert status == 400
        assert message in answer.decode()


def test_oversized_body_gets_413(server: LiveServer) -> None:
    status, _ = server.request("POST", "/filter", b" " * (MAX_BODY + 1))
    assert status == 413


def test_not_ready_until_the_cache_has_synced() -> None:
    live = LiveServer(an_extender(*FLEET, synced=False))
    try:
        assert live.request("GET", "/healthz") == (200, b"ok")
        assert live.request("GET", "/readyz") == (503, b"watch cache not synced yet: nodes, pods")
        status, body = live.request("POST", "/filter", orjson.dumps({"Pod": {}, "NodeNames": []}))
        assert (status, body) == (503, b"the Strata extender's cache has not synced yet")
        live.extender.state.mark_synced("nodes")
        assert live.request("GET", "/readyz") == (503, b"watch cache not synced yet: pods")
        frozen = gc.get_freeze_count()
        live.extender.state.mark_synced("pods")
        assert live.request("GET", "/readyz") == (200, b"ok")
        assert gc.get_freeze_count() > frozen  # the synced cache is out of the cyclic collector's walks
    finally:
        gc.unfreeze()
        live.close()


def test_metrics_expose_latency_rejections_and_cache_size(server: LiveServer) -> None:
    server.post("/filter", {"Pod": a_pod().gpus(8).build(), "NodeNames": ["ghost"]})
    status, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200
    assert 'strata_extender_request_duration_seconds_bucket{le="0.005",verb="filter"}' in text
    assert 'strata_extender_nodes_rejected_total{reason="unknown_node"}' in text
    assert 'strata_extender_cache_objects{kind="nodes"} 4.0' in text


def test_forecast_endpoint_lists_the_published_forecasts(server: LiveServer) -> None:
    status, body = server.request("GET", "/forecast")
    assert status == 200
    assert orjson.loads(body) == {"forecasts": [], "error": None}


# --- fuzzing: whatever arrives, never a 5xx and never a bug hidden behind the neutral answer ---

STRATA_KEYS = [
    api.LABEL_JOB,
    api.LABEL_TP_GROUP,
    api.LABEL_PRIORITY,
    api.LABEL_POOL,
    api.ANN_GANG_SIZE,
    api.ANN_TP_SIZE,
    api.ANN_GPU_TYPES,
    api.ANN_CAPACITY_TYPES,
    api.ANN_CHECKPOINT_INTERVAL,
    api.ANN_EXPECTED_RUNTIME,
    api.ANN_PRECISION,
    api.ANN_THROUGHPUT,
    api.ANN_DEFERRABLE,
]
NODE_NAMES = st.sampled_from(["h100-spot", "h100-res", "mi-spot", "cpu", "ghost", "", "ü"])
ODD_STRINGS = st.one_of(
    st.sampled_from(["8", "0", "-1", "nan", "inf", "1e400", "H100", "any", "spot,reserved", "H100=abc,MI300X=-2"]),
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
QUANTITY = st.one_of(st.integers(-5, 20), st.sampled_from(["4", "8", "1k", "", "x"]), JSON_VALUES)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    metadata = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.text(max_size=8),
                "namespace": st.text(max_size=8),
                "uid": st.text(max_size=8),
                "labels": st.dictionaries(st.sampled_from(STRATA_KEYS), ODD_STRINGS, max_size=6),
                "annotations": st.dictionaries(st.sampled_from(STRATA_KEYS), ODD_STRINGS, max_size=8),
            },
        )
    )
    resources = draw(st.dictionaries(st.sampled_from([api.NVIDIA_GPU, api.AMD_GPU, "cpu"]), QUANTITY, max_size=2))
    container = {"resources": draw(st.sampled_from([{"requests": resources}, {"limits": resources}, resources]))}
    return {"metadata": metadata, "spec": {"containers": [container], "nodeName": draw(st.none() | NODE_NAMES)}}


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=st.binary(max_size=200))
def test_fuzz_raw_bytes(server: LiveServer, body: bytes) -> None:
    for verb in ("/filter", "/prioritize"):
        status, _ = server.request("POST", verb, body)
        assert status in (200, 400)
    assert _internal_errors(server) == 0


@FUZZ
@given(document=JSON_VALUES)
def test_fuzz_json_shapes(server: LiveServer, document: Any) -> None:
    # The standard library's encoder, unlike orjson's, writes integers of any size: the server must cope.
    body = json.dumps(document).encode()
    wrapped = json.dumps({"Pod": document, "NodeNames": ["h100-spot"]}).encode()
    for verb in ("/filter", "/prioritize", "/quote"):
        assert server.request("POST", verb, body)[0] in (200, 400)
        assert server.request("POST", verb, wrapped)[0] in (200, 400)
    assert _internal_errors(server) == 0


@FUZZ
@given(pod=pods(), names=st.lists(NODE_NAMES, max_size=6, unique=True), cut=st.integers(1, 40))
def test_fuzz_extender_args(server: LiveServer, pod: dict[str, Any], names: list[str], cut: int) -> None:
    for body in (
        json.dumps({"Pod": pod, "NodeNames": names}).encode(),
        # As Go writes it, the split path's input (the standard encoder: pods may hold integers orjson refuses).
        json.dumps({"Pod": pod, "Nodes": None, "NodeNames": names}, separators=(",", ":")).encode(),
    ):
        check_extender_args(server, body, names, cut)


def check_extender_args(server: LiveServer, body: bytes, names: list[str], cut: int) -> None:
    status, raw = server.request("POST", "/filter", body)
    result = orjson.loads(raw) if status == 200 else raw
    assert status == 200
    assert result["Error"] == ""
    answered = [*result["NodeNames"], *result["FailedNodes"], *result["FailedAndUnresolvableNodes"]]
    assert sorted(answered) == sorted(names), "every node is either passed or rejected, exactly once"
    assert all(result["FailedNodes"].values())
    assert all(result["FailedAndUnresolvableNodes"].values())
    status, raw = server.request("POST", "/prioritize", body)
    scores = orjson.loads(raw) if status == 200 else raw
    assert status == 200
    assert [entry["Host"] for entry in scores] == names
    assert all(0 <= entry["Score"] <= 10 for entry in scores)
    status, raw = server.request("POST", "/quote", body)
    assert status == 200
    assert set(orjson.loads(raw)) == {"recommended", "options", "kinds"}
    truncated = body[:-cut]
    assert server.request("POST", "/filter", truncated)[0] == 400
    assert _internal_errors(server) == 0


def _internal_errors(server: LiveServer) -> float:
    counter = server.extender.metrics.internal_errors
    return sum(
        sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")
    )
