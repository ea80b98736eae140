"""The router's pure parts: the choice of replica, ejection and readmission, the retry rules and the budget, the
discovery inputs and the settings."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from strata_serving.discovery import (
    DnsSource,
    StaticSource,
    node_pressure_from_metrics,
    queue_depth_from_metrics,
    readiness_from_probe,
    source_from,
    split_host_port,
)
from strata_serving.retries import ENDPOINTS, Endpoint, RetryBudget, may_retry
from strata_serving.router_settings import RouterSettings, load_router_settings
from strata_serving.routing import MIN_HEALTH, Outcome, Policy, ReplicaTable, Unavailable, outcome_of_status

pytestmark = pytest.mark.timeout(30)

CONFIG = RouterSettings().table_config()


def a_table(*addresses: str, ready: bool = True) -> ReplicaTable:
    table = ReplicaTable(CONFIG)
    table.sync(addresses)
    for address in addresses:
        table.probed(address, ready=ready, draining=False, queue_depth=0, now=0.0)
    return table


def choose(table: ReplicaTable, policy: Policy = Policy.LEAST_LOADED, seed: int = 0) -> str:
    chosen = table.choose(policy, random.Random(seed))
    assert chosen is not None
    return chosen.address


def test_least_loaded_picks_the_lowest_expected_wait() -> None:
    table = a_table("a", "b", "c")
    table.replicas["a"].latency_ewma_s = 0.1
    table.replicas["b"].latency_ewma_s = 0.5  # slow
    table.replicas["c"].latency_ewma_s = 0.1
    table.replicas["a"].in_flight = 3  # (3 + 1) x 0.1 = 0.4 < (0 + 1) x 0.5
    assert choose(table) == "c"
    # the choice counts itself in flight: c now waits (1 + 1) x 0.1 = 0.2, still below a and b
    assert table.replicas["c"].in_flight == 1
    assert choose(table) == "c"
    table.replicas["c"].in_flight = 4  # 0.5: now the slow replica ties with c; a (0.4) is best
    assert choose(table) == "a"


def test_with_a_replicas_concurrency_a_request_behind_a_full_batch_waits_about_one_more_batch() -> None:
    def slow_or_fast(concurrency: int) -> str:
        table = ReplicaTable(dataclasses.replace(CONFIG, replica_concurrency=concurrency))
        table.sync(["fast", "slow"])
        for address in ("fast", "slow"):
            table.probed(address, ready=True, draining=False, queue_depth=0, now=0.0)
        table.replicas["fast"].latency_ewma_s, table.replicas["slow"].latency_ewma_s = 0.04, 0.2
        table.replicas["fast"].in_flight = 5
        return choose(table)

    assert slow_or_fast(1) == "slow"  # one at a time: (5 + 1) x 40 ms = 240 ms against 200 ms
    assert slow_or_fast(4) == "fast"  # four at a time: (1 + 5 / 4) x 40 ms = 90 ms


def test_the_queue_depth_a_replica_reports_adds_other_clients_requests_without_counting_the_routers_twice() -> None:
    table = a_table("a", "b")
    a, b = table.replicas["a"], table.replicas["b"]
    a.latency_ewma_s = b.latency_ewma_s = 0.1
    a.in_flight = 2
    table.probed("a", ready=True, draining=False, queue_depth=5, now=1.0)  # 2 of them ours: 3 are another router's
    assert a.others_in_flight == 3
    assert a.expected_wait(0.1) == pytest.approx((2 + 3 + 1) * 0.1)
    b.in_flight = 4
    table.probed("b", ready=True, draining=False, queue_depth=4, now=1.0)  # only ours
    assert b.others_in_flight == 0
    assert choose(table) == "b"  # 5 x 0.1 against a's 6 x 0.1
    # the router's own requests finishing lower the estimate at once; the gauge's share waits for the next probe
    for _ in range(2):
        table.finish(a, Outcome.OK, 0.1, now=1.1)
    assert a.expected_wait(0.1) == pytest.approx((0 + 3 + 1) * 0.1)


def test_ties_are_broken_at_random() -> None:
    table = a_table("a", "b", "c")
    picks = Counter()
    for seed in range(300):
        replica = table.choose(Policy.LEAST_LOADED, random.Random(seed))
        assert replica is not None
        picks[replica.address] += 1
        table.finish(replica, Outcome.OK, 0.1, now=1.0)  # back to equal loads and latencies
    assert set(picks) == {"a", "b", "c"}
    assert min(picks.values()) > 60


def test_an_unmeasured_replica_is_priced_at_the_mean_of_the_others() -> None:
    table = a_table("a", "b", "new")
    table.replicas["a"].latency_ewma_s = 0.1
    table.replicas["b"].latency_ewma_s = 0.3
    assert table.default_latency_s() == pytest.approx(0.2)
    table.replicas["a"].in_flight = 2  # 0.3
    table.replicas["b"].in_flight = 0  # 0.3
    assert choose(table) == "new"  # 0.2: takes its share, not nothing
    assert table.replicas["new"].expected_wait(table.default_latency_s()) == pytest.approx(0.4)


def test_round_robin_cycles_over_the_routable_replicas() -> None:
    table = a_table("a", "b", "c")
    table.replicas["a"].latency_ewma_s = 5.0  # ignored by round-robin
    assert [choose(table, Policy.ROUND_ROBIN) for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    table.probed("b", ready=False, draining=True, queue_depth=None, now=1.0)
    assert {choose(table, Policy.ROUND_ROBIN) for _ in range(4)} == {"a", "c"}


def test_a_retry_never_goes_to_a_replica_the_request_already_tried() -> None:
    table = a_table("a", "b")
    assert table.choose(Policy.LEAST_LOADED, random.Random(0), frozenset({"a"})).address == "b"  # type: ignore[union-attr]
    assert table.choose(Policy.LEAST_LOADED, random.Random(0), frozenset({"a", "b"})) is None


def test_a_refused_connection_ejects_at_once_and_other_failures_after_three_in_a_row() -> None:
    table = a_table("a", "b")
    a, b = table.replicas["a"], table.replicas["b"]
    assert table.finish(a, Outcome.CONNECT_FAILED, 0.0, now=10.0)
    assert a.ejected
    assert not a.routable
    for n in range(1, CONFIG.eject_after_failures):
        assert not table.finish(b, Outcome.TIMEOUT, 1.0, now=10.0), n
    assert table.finish(b, Outcome.RESET, 0.0, now=10.0)
    assert table.unavailable_reason() is Unavailable.ALL_EJECTED


def test_a_success_resets_the_run_of_failures_and_refusals_are_not_failures() -> None:
    table = a_table("a")
    a = table.replicas["a"]
    for outcome in (Outcome.TIMEOUT, Outcome.SERVER_ERROR, Outcome.OK, Outcome.TIMEOUT, Outcome.RESET):
        assert not table.finish(a, outcome, 0.1, now=1.0)
    assert a.consecutive_failures == 2
    table.finish(a, Outcome.OVERLOADED, 0.0, now=1.0)
    assert a.consecutive_failures == 2
    assert not a.ejected
    assert not table.finish(a, Outcome.UNAVAILABLE, 0.0, now=1.0)
    assert not a.ejected
    assert not a.ready


def test_failures_lower_the_health_and_so_the_share_of_traffic() -> None:
    table = a_table("a", "b")
    for replica in table.replicas.values():
        replica.latency_ewma_s = 0.1
    table.finish(table.replicas["a"], Outcome.SERVER_ERROR, 0.1, now=1.0)
    table.replicas["a"].in_flight = 0
    assert table.replicas["a"].health < 1.0
    table.replicas["b"].in_flight = 0
    assert choose(table) == "b"


def test_a_replica_on_a_stalled_node_gets_the_traffic_only_when_the_others_queue_past_what_the_stall_costs() -> None:
    table = a_table("calm", "stalled")
    calm, stalled = table.replicas["calm"], table.replicas["stalled"]
    calm.latency_ewma_s = stalled.latency_ewma_s = 0.1
    # the node stalls half the time: health 0.5, so one request there is priced as two
    assert not table.probed("stalled", ready=True, draining=False, queue_depth=0, now=1.0, node_pressure=0.5)
    assert stalled.health == 0.5
    assert choose(table) == "calm"  # 0.1 against (0 + 1) x 0.1 / 0.5 = 0.2
    calm.in_flight = 2  # (2 + 1) x 0.1 = 0.3: the stalled node's replica is now the shorter wait
    assert choose(table) == "stalled"
    stalled.in_flight = 0
    table.probed("stalled", ready=True, draining=False, queue_depth=0, now=1.5, node_pressure=0.8)
    assert choose(table) == "calm"  # 0.3 against 0.1 / 0.2 = 0.5
    stalled.in_flight = calm.in_flight = 0
    # pressure and failures multiply; the floor keeps a replica choosable when it is the last one
    table.finish(stalled, Outcome.SERVER_ERROR, 0.1, now=2.0)
    assert stalled.health == pytest.approx((1 - CONFIG.failure_alpha) * (1 - 0.8))
    table.probed("stalled", ready=True, draining=False, queue_depth=0, now=3.0, node_pressure=1.0)
    assert stalled.health == MIN_HEALTH


def test_a_probe_without_a_metrics_page_keeps_the_last_pressure_and_a_page_without_the_gauge_clears_it() -> None:
    table = a_table("a")
    table.probed("a", ready=True, draining=False, queue_depth=0, now=1.0, node_pressure=0.3)
    table.probed("a", ready=True, draining=False, queue_depth=None, now=2.0, node_pressure=None)  # /metrics failed
    assert table.replicas["a"].node_pressure == 0.3
    table.probed("a", ready=True, draining=False, queue_depth=0, now=3.0, node_pressure=node_pressure_from_metrics(""))
    assert table.replicas["a"].node_pressure == 0.0


def test_the_node_pressure_is_the_most_stalled_resource_the_server_reports() -> None:
    page = (
        "# TYPE strata_serve_node_pressure gauge\n"
        'strata_serve_node_pressure{resource="cpu"} 0.25\n'
        'strata_serve_node_pressure{resource="memory"} 0.4\n'
        "strata_serve_node_pressure_other 0.9\n"
        "strata_serve_in_flight 2.0\n"
    )
    assert node_pressure_from_metrics(page) == 0.4
    assert queue_depth_from_metrics(page) == 2.0
    assert node_pressure_from_metrics("strata_serve_in_flight 2.0\n") == 0.0  # a server without PSI
    assert node_pressure_from_metrics('strata_serve_node_pressure{resource="cpu"} NaN\n') == 0.0
    assert node_pressure_from_metrics('strata_serve_node_pressure{resource="cpu"} 7\n') == 1.0  # clipped
    assert node_pressure_from_metrics('strata_serve_node_pressure{resource="cpu"} -1\n') == 0.0
    assert node_pressure_from_metrics('strata_serve_node_pressure{resource="cpu"} high\n') == 0.0


def test_an_ejected_replica_comes_back_only_through_a_probe_after_its_cooldown_which_doubles() -> None:
    table = a_table("a")
    a = table.replicas["a"]
    table.finish(a, Outcome.CONNECT_FAILED, 0.0, now=100.0)
    assert a.ejected_until == 100.0 + CONFIG.eject_cooldown_s
    assert not table.probed("a", ready=True, draining=False, queue_depth=0, now=100.5)  # cooldown not over
    assert not table.probed("a", ready=False, draining=False, queue_depth=None, now=103.0)  # probe failed
    assert a.ejected
    assert table.choose(Policy.LEAST_LOADED, random.Random(0)) is None
    assert table.probed("a", ready=True, draining=False, queue_depth=0, now=103.0)
    assert a.routable
    table.finish(a, Outcome.CONNECT_FAILED, 0.0, now=104.0)  # again: twice the cooldown
    assert a.ejected_until == 104.0 + 2 * CONFIG.eject_cooldown_s
    for _ in range(10):
        table.eject(a, now=200.0)
    assert a.ejected_until == 200.0 + CONFIG.eject_cooldown_max_s


def test_a_replica_leaves_rotation_after_unanswered_probes_in_a_row_but_at_once_when_it_answers_not_ready() -> None:
    threshold = CONFIG.unready_after_unanswered_probes
    assert threshold > 1
    table = a_table("a", "b")
    for late in range(threshold - 1):  # a probe answered late, as on a node short of CPU: still serving
        table.probed("a", ready=None, draining=False, queue_depth=None, now=1.0 + late)
        assert table.replicas["a"].routable
    table.probed("a", ready=True, draining=False, queue_depth=0, now=5.0)  # an answer starts the count again
    for late in range(threshold - 1):
        table.probed("a", ready=None, draining=False, queue_depth=None, now=6.0 + late)
    assert table.replicas["a"].routable
    table.probed("a", ready=None, draining=False, queue_depth=None, now=9.0)  # the threshold-th in a row
    assert not table.replicas["a"].routable
    assert {choose(table, seed=seed) for seed in range(10)} == {"b"}
    table.probed("a", ready=True, draining=False, queue_depth=0, now=10.0)
    assert table.replicas["a"].routable
    table.probed("b", ready=False, draining=False, queue_depth=None, now=10.0)  # refused, or 503: no grace
    assert not table.replicas["b"].routable


def test_the_reason_no_replica_can_take_a_request() -> None:
    assert ReplicaTable(CONFIG).unavailable_reason() is Unavailable.NONE_DISCOVERED
    table = a_table("a", "b", ready=False)
    assert table.unavailable_reason() is Unavailable.NOT_READY
    table.probed("a", ready=False, draining=True, queue_depth=None, now=1.0)
    assert table.unavailable_reason() is Unavailable.ALL_DRAINING
    table.eject(table.replicas["b"], now=1.0)
    assert table.unavailable_reason() is Unavailable.ALL_EJECTED
    table.probed("b", ready=True, draining=False, queue_depth=0, now=60.0)
    assert table.unavailable_reason() is None
    assert table.counts() == {"routable": 1, "ejected": 0, "draining": 1, "not_ready": 0}


def test_sync_adds_new_replicas_not_ready_and_forgets_vanished_ones() -> None:
    table = a_table("a", "b")
    assert table.sync(["b", "c", "c"]) == (["c"], ["a"])
    assert list(table.replicas) == ["b", "c"]
    assert table.replicas["b"].routable
    assert not table.replicas["c"].routable


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.OK), (400, Outcome.OK), (404, Outcome.OK), (429, Outcome.OVERLOADED),
     (503, Outcome.UNAVAILABLE), (500, Outcome.SERVER_ERROR), (502, Outcome.SERVER_ERROR)],
)  # fmt: skip
def test_outcome_of_a_replicas_status(status: int, outcome: Outcome) -> None:
    assert outcome_of_status(status) is outcome


READ_ONLY = Endpoint("/read", free_of_side_effects=True)
WRITES = Endpoint("/write", free_of_side_effects=False)


@pytest.mark.parametrize(
    ("outcome", "read_only", "writes"),
    [
        (Outcome.OK, False, False),
        (Outcome.CONNECT_FAILED, True, True),  # never sent
        (Outcome.UNAVAILABLE, True, True),  # refused unread (draining, warming up)
        (Outcome.OVERLOADED, True, True),  # refused unread (queue full)
        (Outcome.TIMEOUT, True, False),  # may have run
        (Outcome.RESET, True, False),
        (Outcome.SERVER_ERROR, True, False),
    ],
)
def test_which_failures_are_retried(outcome: Outcome, read_only: bool, writes: bool) -> None:
    assert may_retry(outcome, READ_ONLY) is read_only
    assert may_retry(outcome, WRITES) is writes
    assert not may_retry(outcome, READ_ONLY, response_started=True)  # a stream already reaching the client


def test_generation_completion_scoring_and_the_model_list_are_declared_free_of_side_effects() -> None:
    assert set(ENDPOINTS) == {"/v1/generate", "/v1/predict", "/v1/completions", "/v1/models"}
    assert all(endpoint.free_of_side_effects for endpoint in ENDPOINTS.values())


def test_the_budget_allows_a_ratio_of_recent_requests_plus_a_floor() -> None:
    budget = RetryBudget(ratio=0.2, floor_per_s=1.0, window_s=10.0)
    for _ in range(50):
        budget.record_request(now=0.0)
    assert budget.allowance(now=0.0) == 20  # 0.2 x 50 + 1 x 10
    spent = sum(budget.try_spend(now=1.0) for _ in range(100))
    assert spent == 20
    assert not budget.try_spend(now=9.9)
    # the window slides: the requests and retries of t=0-1 are forgotten, the floor is left
    assert budget.allowance(now=10.5) == 10
    assert sum(budget.try_spend(now=11.5) for _ in range(100)) == 10


def test_a_quiet_service_still_gets_its_floor_and_a_zero_budget_retries_nothing() -> None:
    assert RetryBudget(ratio=0.2, floor_per_s=0.5, window_s=4.0).try_spend(now=0.0)
    assert not RetryBudget(ratio=0.0, floor_per_s=0.0, window_s=4.0).try_spend(now=0.0)


def test_the_queue_depth_is_read_from_the_servers_gauge() -> None:
    text = (
        "# HELP strata_serve_in_flight Requests queued or running\n# TYPE strata_serve_in_flight gauge\n"
        "strata_serve_in_flight_other 9.0\nstrata_serve_in_flight 7.0\n"
    )
    assert queue_depth_from_metrics(text) == 7.0
    assert queue_depth_from_metrics('strata_serve_in_flight{pod="x"} 3\n') == 3.0
    assert queue_depth_from_metrics("other 1\n") is None
    assert queue_depth_from_metrics("strata_serve_in_flight nan-ish\n") is None


def test_readiness_from_the_servers_readyz() -> None:
    assert readiness_from_probe(200, b'{"status": "ready"}') == (True, False)
    assert readiness_from_probe(503, b'{"status": "draining"}') == (False, True)
    assert readiness_from_probe(503, b'{"status": "warming up"}') == (False, False)
    assert readiness_from_probe(None, b"") == (False, False)
    assert readiness_from_probe(0, b"") == (False, False)  # the connection refused


def test_replica_sources_from_the_settings() -> None:
    assert source_from(["10.0.0.1:8000"], "") == StaticSource(("10.0.0.1:8000",))
    dns = source_from([], "model-replicas.default.svc:8000")
    assert isinstance(dns, DnsSource)
    assert (dns.name, dns.port) == ("model-replicas.default.svc", 8000)
    assert split_host_port("[fd00::1]:80") == ("fd00::1", 80)
    with pytest.raises(ValueError, match="either --replica"):
        source_from([], "")
    with pytest.raises(ValueError, match="either --replica"):
        source_from(["a:1"], "b:2")
    with pytest.raises(ValueError, match=r"expected host:port, got 'nohost'"):
        source_from(["nohost"], "")


async def test_a_dns_source_lists_every_address_of_the_name() -> None:
    assert await DnsSource("127.0.0.1", 8000).addresses() == ["127.0.0.1:8000"]


def test_settings_from_flags_and_environment() -> None:
    settings = load_router_settings(
        ["--replica", "a:1", "--replica", "b:2", "--policy", "round-robin"], env={"STRATA_ROUTER_MAX_ATTEMPTS": "2"}
    )
    assert settings.replica == ("a:1", "b:2")
    assert settings.policy == "round-robin"
    assert settings.max_attempts == 2
    with pytest.raises(ValueError, match="'random' is not a valid Policy"):
        RouterSettings(policy="random")
    with pytest.raises(ValueError, match="replica_concurrency must be at least 1"):
        RouterSettings(replica_concurrency=0)
    with pytest.raises(ValueError, match="unready_after_unanswered_probes must be at least 1, got 0"):
        load_router_settings(["--unready-after-unanswered-probes", "0"])
