"""A canary revision behind the router: ``canary_percent`` of the requests go to the canary's replicas and the
rest to the stable revision's, the policy choosing within each; a revision with no routable replica leaves the
other every request. The pure weighting first, then a router process in front of one fake replica of each
revision on loopback."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import pytest
from router_support import Processes, metrics, post, wait_ready, wait_routable

from strata_serving.discovery import StaticSource, canary_source_from
from strata_serving.router_settings import RouterSettings, load_router_settings
from strata_serving.routing import Policy, Replica, ReplicaTable, revision_candidates

pytestmark = pytest.mark.timeout(60)

CONFIG = RouterSettings().table_config()
GENERATE = {"prompt": "def main(", "max_new_tokens": 4}


def a_table(stable: list[str], canary: list[str]) -> ReplicaTable:
    table = ReplicaTable(CONFIG)
    table.sync(stable, canary)
    for address in [*stable, *canary]:
        table.probed(address, ready=True, draining=False, queue_depth=0, now=0.0)
    return table


def canary_share(
    table: ReplicaTable, share: float, requests: int = 4000, policy: Policy = Policy.LEAST_LOADED
) -> float:
    rng = random.Random(7)
    to_canary = 0
    for _ in range(requests):
        chosen = table.choose(policy, rng, canary_share=share)
        assert chosen is not None
        table.abandon(chosen)  # nothing stays in flight: only the revision draw decides
        to_canary += chosen.canary
    return to_canary / requests


def test_revision_candidates_draws_the_canary_below_its_share_and_falls_back_to_whichever_is_there() -> None:
    stable, canary = Replica("s"), Replica("c", canary=True)
    assert revision_candidates([stable, canary], 0.25, draw=0.2) == [canary]
    assert revision_candidates([stable, canary], 0.25, draw=0.25) == [stable]
    assert revision_candidates([stable, canary], 0.0, draw=0.0) == [stable]  # 0%: never the canary
    assert revision_candidates([stable, canary], 1.0, draw=0.999) == [canary]  # 100%: always
    assert revision_candidates([canary], 0.0, draw=0.5) == [canary]  # the stable revision is down: the canary serves
    assert revision_candidates([stable], 1.0, draw=0.5) == [stable]  # and the other way round


@pytest.mark.parametrize("policy", list(Policy))
@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 1.0])
def test_the_canary_gets_its_share_of_requests_whatever_the_replica_counts(policy: Policy, share: float) -> None:
    table = a_table(["s1", "s2", "s3", "s4"], ["c1"])  # one canary replica among four stable ones
    assert canary_share(table, share, policy=policy) == pytest.approx(share, abs=0.03)


def test_an_ejected_canary_leaves_the_stable_revision_every_request_and_comes_back_after_its_probe() -> None:
    table = a_table(["s1"], ["c1"])
    table.eject(table.replicas["c1"], now=0.0)
    assert canary_share(table, 0.5) == 0.0
    table.probed("c1", ready=True, draining=False, queue_depth=0, now=60.0)
    assert canary_share(table, 0.5) == pytest.approx(0.5, abs=0.03)


def test_sync_follows_a_replica_between_revisions_and_forgets_vanished_ones() -> None:
    table = a_table(["a", "b"], ["c"])
    assert {address for address, replica in table.replicas.items() if replica.canary} == {"c"}
    added, removed = table.sync(["a"], ["b", "c"])  # the canary grew, the stable revision shrank
    assert (added, removed) == ([], [])
    assert {address for address, replica in table.replicas.items() if replica.canary} == {"b", "c"}
    assert table.replicas["b"].ready  # the same replica, still probed ready
    added, removed = table.sync(["a", "b", "c"])  # promoted: one revision again
    assert not any(replica.canary for replica in table.replicas.values())


def test_canary_settings_are_checked_and_name_a_source() -> None:
    settings = load_router_settings(
        ["--replica", "10.0.0.1:8000", "--canary-replica", "10.0.0.2:8000", "--canary-percent", "20"], env={}
    )
    assert settings.canary_percent == 20
    assert canary_source_from(settings.canary_replica, settings.canary_dns) == StaticSource(("10.0.0.2:8000",))
    assert canary_source_from((), "") is None
    with pytest.raises(ValueError, match="canary_percent"):
        RouterSettings(canary_percent=101)
    with pytest.raises(ValueError, match="either --canary-replica or --canary-dns"):
        RouterSettings(canary_replica=("10.0.0.2:8000",), canary_dns="canary.ns.svc:8000")


async def test_a_router_sends_the_canary_percent_of_requests_to_the_new_revision_and_all_when_the_old_dies(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    stable = processes.fake_replica("stable", "--delay", "0.005", "--slots", "8")
    canary = processes.fake_replica("canary", "--delay", "0.005", "--slots", "8")
    router = processes.router([stable.address], "--canary-replica", canary.address, "--canary-percent", "25")
    await asyncio.gather(wait_ready(stable), wait_ready(canary))
    await wait_ready(router)
    await wait_routable(router, 2)

    answers = [await post(session, router.url + "/v1/generate", GENERATE) for _ in range(200)]
    assert [answer.status for answer in answers] == [200] * 200
    to_canary = Counter(answer.replica for answer in answers)[canary.address]
    attempts = {
        labels: n for (name, labels), n in (await metrics(router)).items() if name == "strata_router_attempts_total"
    }
    # 25% of 200 is 50, give or take 4 standard deviations (6 each); the attempts by outcome say why, should it miss
    assert 26 <= to_canary <= 74, (to_canary, attempts)

    stable.kill()
    answers = [await post(session, router.url + "/v1/generate", GENERATE) for _ in range(20)]
    assert [answer.status for answer in answers] == [200] * 20  # a request caught by the kill is retried
    assert {answer.replica for answer in answers[-10:]} == {canary.address}
