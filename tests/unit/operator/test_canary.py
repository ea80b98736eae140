"""Canary rollouts of an InferenceService (strata_operator.core.canary): when a new revision runs beside the
stable one, how big the canary is and how the pool's grant is shared, the canary's Deployment and headless
Service, what the routers are told, and the status and Events of a start, a promotion and a rollback."""

from __future__ import annotations

import re
from typing import Any

import pytest
from operator_builders import T0, a_pool, schema
from serving_builders import a_service

import strata_api as api
from strata_operator.core import canary, pods, router, serving
from strata_operator.core.canary import RolloutPlan
from strata_operator.core.serving import ModelSource, ObservedDeployment
from strata_operator.core.status import StatusDraft
from strata_operator.settings import OperatorSettings
from strata_serving.router_settings import load_router_settings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SETTINGS = OperatorSettings()
CPU_POOL = a_pool("pool", max_gpus=0, maxCPUs=8, capacityTypes=["on-demand", "reserved"])
SOURCE = ModelSource(checkpoint="")


def with_percent(percent: int, **kwargs: Any) -> api.InferenceService:
    return a_service("chat", min_replicas=5, rollout={"canaryPercent": percent}, **kwargs)


def deployment(revision: str, replicas: int = 5, ready: int | None = None) -> ObservedDeployment:
    ready = replicas if ready is None else ready
    return ObservedDeployment(replicas, ready, replicas, revision, 1, 1)


@pytest.mark.parametrize(
    ("percent", "stable", "trial", "plan"),
    [
        (20, None, None, RolloutPlan("new")),  # a new service: nothing to compare with
        (20, deployment("new"), None, RolloutPlan("new")),  # the spec's revision runs already
        (20, deployment("old"), None, RolloutPlan("old", "new", 20)),  # a new revision: the canary starts
        (20, deployment("old"), deployment("new", 1), RolloutPlan("old", "new", 20)),  # and keeps running
        (0, deployment("old"), None, RolloutPlan("new")),  # no canary asked: the stable rolls as a whole
        (100, deployment("old"), deployment("new", 1), RolloutPlan("new", remove_canary=True)),  # promoted
        (0, deployment("old"), deployment("new", 1), RolloutPlan("new", remove_canary=True)),  # promoted too
        (20, deployment("new"), deployment("newer", 1), RolloutPlan("new", remove_canary=True)),  # rolled back
    ],
    ids=["new-service", "unchanged", "starts", "runs", "no-canary", "promote-100", "promote-0", "rollback"],
)
def test_the_rollout_plan(
    percent: int, stable: ObservedDeployment | None, trial: ObservedDeployment | None, plan: RolloutPlan
) -> None:
    assert canary.plan_rollout(with_percent(percent), "new", stable, trial) == plan


STABLE_SPEC = {
    "replicas": 5,
    "selector": {"matchLabels": {api.LABEL_INFERENCE_SERVICE: "chat"}},
    "template": {"metadata": {"labels": {api.LABEL_REVISION: "old"}}, "spec": {"containers": [{"name": "serve"}]}},
    "progressDeadlineSeconds": 600,  # a default the API server filled in: kept as it ran
}
"""The stable Deployment's spec as the watch sees it."""
KEPT = serving.KeptStable("old", {k: v for k, v in STABLE_SPEC.items() if k != "replicas"})


def running(revision: str, spec: dict[str, Any], replicas: int = 5, kept: serving.KeptStable | None = None) -> Any:
    return ObservedDeployment(replicas, replicas, replicas, revision, 1, 1, spec, kept)


def test_a_canary_service_left_without_its_deployment_is_removed_and_one_still_in_use_is_kept() -> None:
    """An operator killed between the canary's two deletes leaves its Service alone: the plan removes it."""
    assert canary.plan_rollout(with_percent(100), "new", deployment("new"), None, True) == RolloutPlan(
        "new", remove_canary=True
    )
    assert canary.plan_rollout(with_percent(100), "new", deployment("new"), None, False) == RolloutPlan("new")
    # while a canary runs its Service is wanted, whichever of its two objects is made first
    assert canary.plan_rollout(with_percent(20), "new", deployment("old"), None, True) == RolloutPlan("old", "new", 20)


def test_a_stable_deleted_by_hand_during_a_canary_stays_the_revision_the_canary_keeps() -> None:
    trial = running("new", {}, 1, KEPT)
    assert canary.plan_rollout(with_percent(20), "new", None, trial) == RolloutPlan("old", "new", 20)
    # promoted or rolled back meanwhile: the spec's revision is the stable one, as without a kept one
    assert canary.plan_rollout(with_percent(100), "new", None, trial) == RolloutPlan("new", remove_canary=True)
    assert canary.plan_rollout(with_percent(20), "old", None, trial) == RolloutPlan("old", remove_canary=True)


def test_the_canary_keeps_the_stable_deployment_as_it_ran_when_the_canary_started() -> None:
    plan = RolloutPlan("old", "new", 20)
    stable = running("old", STABLE_SPEC)
    assert canary.kept_stable(plan, stable, None) == KEPT  # the start: taken from the stable one, less its count
    edited = running("old", {**STABLE_SPEC, "template": {"metadata": {}, "spec": {"containers": []}}})
    assert canary.kept_stable(plan, edited, running("new", {}, 1, KEPT)) == KEPT  # later: what the canary keeps
    assert canary.kept_stable(plan, None, None) is None  # both gone: nothing left to keep
    assert canary.kept_stable(RolloutPlan("new"), stable, None) is None  # no canary

    assert not canary.stable_tampered(KEPT, stable)
    assert not canary.stable_tampered(KEPT, running("old", {**STABLE_SPEC, "replicas": 7}))  # its count is ours
    assert canary.stable_tampered(KEPT, edited)
    assert canary.stable_tampered(KEPT, None)

    put_back = canary.build_stable_deployment(with_percent(20), KEPT, 4)
    assert put_back["metadata"]["name"] == "chat"
    assert put_back["metadata"]["annotations"] == {api.LABEL_REVISION: "old"}
    assert put_back["metadata"]["ownerReferences"][0]["name"] == "chat"
    assert put_back["spec"] == {**STABLE_SPEC, "replicas": 4}


def test_the_canary_deployment_carries_what_it_keeps_and_the_watch_reads_it_back() -> None:
    trial = serving.build_deployment(with_percent(20), CPU_POOL, SOURCE, 1, SETTINGS, canary=True)
    annotated = canary.keeping(trial, KEPT)
    seen = ObservedDeployment.from_body({"metadata": annotated["metadata"], "spec": annotated["spec"]})
    assert seen.kept == KEPT
    assert seen.spec == annotated["spec"]
    assert canary.keeping(serving.build_deployment(with_percent(20), CPU_POOL, SOURCE, 1, SETTINGS), None)["metadata"][
        "annotations"
    ].keys() == {api.LABEL_REVISION}
    for text in (None, "", "{", '{"revision": 3}', '{"revision": "old", "spec": {}}'):
        assert serving.KeptStable.parse(text) is None  # missing or edited by hand into something else


def test_a_stable_put_back_says_so() -> None:
    draft = StatusDraft({"stableRevision": "old", "canaryRevision": "new", "canaryReplicas": 1}, T0)
    canary.rollout_status(draft, RolloutPlan("old", "new", 20), running("new", {}, 1), 1, 3, restored="deleted")
    assert events(draft) == [
        (
            "StableRestored",
            "the stable Deployment (revision old) was deleted during the canary; put back as it ran",
        )
    ]
    assert draft.events[0].type == "Warning"


@pytest.mark.parametrize(("total", "percent", "size"), [(10, 20, 2), (5, 20, 1), (3, 50, 2), (1, 1, 1), (0, 20, 0)])
def test_the_canary_is_its_share_of_the_stable_count_rounded_up_and_at_least_one(
    total: int, percent: int, size: int
) -> None:
    assert canary.canary_replicas(total, percent) == size


def test_the_canary_asks_its_pool_beside_the_stable_replicas_which_come_first() -> None:
    plan = RolloutPlan("old", "new", 20)
    assert canary.asked(5, plan) == 6
    assert canary.asked(5, RolloutPlan("new")) == 5
    assert canary.split(6, 5, plan) == (5, 1)
    assert canary.split(5, 5, plan) == (5, 0)  # the quota holds only the stable's: no canary replica yet
    assert canary.split(5, 5, RolloutPlan("new")) == (5, 0)
    assert canary.stored_ask(with_percent(20), {"canaryRevision": "new"}, 5) == 6
    assert canary.stored_ask(with_percent(20), {}, 5) == 5


def test_the_canary_deployment_runs_the_spec_template_apart_from_the_stable_one() -> None:
    service = with_percent(20)
    stable = serving.build_deployment(service, CPU_POOL, SOURCE, 5, SETTINGS)
    trial = serving.build_deployment(service, CPU_POOL, SOURCE, 1, SETTINGS, canary=True)
    rev = stable["metadata"]["annotations"][api.LABEL_REVISION]

    assert trial["metadata"]["name"] == "chat-canary"
    assert trial["metadata"]["annotations"] == {api.LABEL_REVISION: rev}  # the same hash: promotion is exact
    assert trial["spec"]["replicas"] == 1
    canary_labels = {**serving.selector(service), api.LABEL_CANARY: "true"}
    assert trial["spec"]["selector"] == {"matchLabels": canary_labels}
    labels = trial["spec"]["template"]["metadata"]["labels"]
    assert labels == {**stable["spec"]["template"]["metadata"]["labels"], api.LABEL_CANARY: "true"}
    assert trial["spec"]["template"]["spec"] == stable["spec"]["template"]["spec"]

    headless = canary.build_canary_service(service)
    assert headless["metadata"]["name"] == "chat-canary-replicas"
    assert headless["spec"]["selector"] == canary_labels
    assert (headless["spec"]["clusterIP"], headless["spec"]["publishNotReadyAddresses"]) == ("None", True)


def test_the_routers_split_requests_only_while_a_canary_runs() -> None:
    service = with_percent(20)
    splitting = router.router_env(service, SETTINGS, rollout=RolloutPlan("old", "new", 20))
    assert splitting["STRATA_ROUTER_CANARY_DNS"] == "chat-canary-replicas.team.svc:8000"
    settings = load_router_settings([], env=splitting)  # names the router reads, values it accepts
    assert (settings.canary_dns, settings.canary_percent) == ("chat-canary-replicas.team.svc:8000", 20.0)
    for plan in (None, RolloutPlan("new")):
        env = router.router_env(service, SETTINGS, rollout=plan)
        assert "STRATA_ROUTER_CANARY_DNS" not in env
        assert "STRATA_ROUTER_CANARY_PERCENT" not in env
    # a change of split rolls the routers (their environment is their template)
    before = router.build_router_deployment(service, SETTINGS)["metadata"]["annotations"]
    during = router.build_router_deployment(service, SETTINGS, rollout=RolloutPlan("old", "new", 20))
    assert during["metadata"]["annotations"] != before


def events(draft: StatusDraft) -> list[tuple[str, str]]:
    return [(e.reason, e.message) for e in draft.events]


def test_status_and_events_of_a_canary_started_then_promoted() -> None:
    start = StatusDraft({"stableRevision": "old"}, T0)
    canary.rollout_status(start, RolloutPlan("old", "new", 20), deployment("new", 1, ready=0), 1, 3)
    assert start.patch() == {"canaryRevision": "new", "canaryReplicas": 1, "canaryReadyReplicas": 0}
    assert events(start) == [
        (
            "CanaryStarted",
            "revision new runs as a canary of 1 replicas taking 20% of the requests; revision old stays the stable one",
        )
    ]
    # posted once, before the write, for the revision and the spec generation that started it
    assert start.events[0].once == "g3.new"
    running = {"stableRevision": "old", "canaryRevision": "new", "canaryReplicas": 1, "canaryReadyReplicas": 0}
    again = StatusDraft(running, T0)
    canary.rollout_status(again, RolloutPlan("old", "new", 20), deployment("new", 1), 1, 3)
    assert (again.patch(), again.events) == ({"canaryReadyReplicas": 1}, [])

    promoted = StatusDraft({**running, "canaryReadyReplicas": 1}, T0)
    canary.rollout_status(promoted, RolloutPlan("new", remove_canary=True), None, 0, 4)
    assert promoted.patch() == {
        "stableRevision": "new",
        "canaryRevision": None,
        "canaryReplicas": None,
        "canaryReadyReplicas": None,
    }
    assert events(promoted) == [
        ("CanaryPromoted", "revision new promoted: the stable replicas roll to it and the canary's go")
    ]
    assert promoted.events[0].once == "g4.new"


def test_each_checkpoint_that_replaces_a_canary_under_one_generation_is_an_event_of_its_own() -> None:
    """A TrainingJob's newer checkpoint is a new revision with no change of spec: a canary replaced by it is news
    again, and an Event named by the generation alone would be refused as the first one's duplicate."""
    running = {"stableRevision": "old", "canaryRevision": "step500", "canaryReplicas": 1, "canaryReadyReplicas": 1}
    draft = StatusDraft(running, T0)
    serves = "the newest complete checkpoint of TrainingJob tune, step 1000 by its status.lastCheckpoint"
    canary.rollout_status(draft, RolloutPlan("old", "step1000", 20), None, 1, 3, serving=serves)
    assert events(draft) == [
        (
            "CanaryStarted",
            "revision step1000 runs as a canary of 1 replicas taking 20% of the requests; revision old stays the "
            f"stable one (it replaces canary revision step500); it serves {serves}",
        )
    ]
    assert draft.events[0].once == "g3.step1000"


def test_a_roll_to_a_new_revision_without_a_canary_is_an_event_once() -> None:
    serves = "the newest complete checkpoint of TrainingJob tune, step 1000 by its status.lastCheckpoint"
    rolled = StatusDraft({"stableRevision": "step500"}, T0)
    canary.rollout_status(rolled, RolloutPlan("step1000"), deployment("step1000", 2), 0, 3, serving=serves)
    assert rolled.patch() == {"stableRevision": "step1000"}
    assert events(rolled) == [
        (
            "Rolling",
            "revision step500 -> step1000: the replicas roll to it within spec.rollout.maxSurge and maxUnavailable; "
            f"it serves {serves}",
        )
    ]
    assert rolled.events[0].once == "g3.step1000"
    for stored in ({}, {"stableRevision": "step1000"}):  # a new service's first revision, and no change: no news
        quiet = StatusDraft(stored, T0)
        canary.rollout_status(quiet, RolloutPlan("step1000"), deployment("step1000", 2), 0, 3, serving=serves)
        assert quiet.events == []


def test_a_rolled_back_canary_says_so() -> None:
    draft = StatusDraft({"stableRevision": "old", "canaryRevision": "new", "canaryReplicas": 1}, T0)
    canary.rollout_status(draft, RolloutPlan("old", remove_canary=True), None, 0, 4)
    assert events(draft) == [
        ("CanaryRolledBack", "canary revision new rolled back: its replicas go and the stable ones run revision old")
    ]
    assert draft.patch() == {"canaryRevision": None, "canaryReplicas": None}


def test_a_service_with_a_canary_is_ready_when_both_revisions_are() -> None:
    service = with_percent(20)
    allotment = serving.Allotment(6, False, "WithinQuota", "")
    starting = serving.service_status(
        service, {}, SOURCE, allotment, deployment("old"), "new", T0, canary_deployment=deployment("new", 1, ready=0)
    )
    assert (starting.changes["readyReplicas"], starting.changes["desiredReplicas"]) == (5, 6)
    assert next(c for c in starting.changes["conditions"] if c["type"] == "Ready")["status"] == "False"
    ready = serving.service_status(
        service, {}, SOURCE, allotment, deployment("old"), "new", T0, canary_deployment=deployment("new", 1),
        routers=deployment("router", 2),
    )  # fmt: skip
    assert next(c for c in ready.changes["conditions"] if c["type"] == "Ready")["status"] == "True"


def name_rules() -> list[str]:
    """The CEL rules crds/inferenceservice.yaml puts on metadata.name."""
    rules = schema("inferenceservice.yaml")["properties"]["metadata"]["properties"]["name"]["x-kubernetes-validations"]
    return [r["rule"] for r in rules]


def owned_objects(service: api.InferenceService) -> list[dict[str, Any]]:
    """Every object the operator makes for a service, a canary's included."""
    return [
        serving.build_deployment(service, CPU_POOL, SOURCE, 4, SETTINGS),
        serving.build_deployment(service, CPU_POOL, SOURCE, 1, SETTINGS, canary=True),
        serving.build_replicas_service(service),
        serving.build_disruption_budget(service),
        canary.build_canary_service(service),
        router.build_router_deployment(service, SETTINGS, rollout=RolloutPlan("old", "new", 20)),
        router.build_router_config(service, None),
        router.build_front_service(service),
        router.build_router_budget(service),
    ]


def test_every_object_of_a_service_of_the_longest_name_has_a_name_kubernetes_takes() -> None:
    longest = min(int(m.group(1)) for r in name_rules() if (m := re.fullmatch(r"self\.size\(\) <= (\d+)", r)))
    service = a_service("s" * longest, min_replicas=5, rollout={"canaryPercent": 20})
    for made in owned_objects(service):
        name = made["metadata"]["name"]
        service_name = made["kind"] == "Service"  # a DNS-1035 label; the others' a DNS-1123 subdomain
        assert len(name) <= (63 if service_name else 253), name
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?" if service_name else r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name)
        template = made.get("spec", {}).get("template", {}).get("metadata", {})
        for labels in (made["metadata"].get("labels", {}), template.get("labels", {})):
            assert all(len(value) <= 63 for value in labels.values()), labels


def test_the_crd_refuses_every_name_whose_objects_would_take_another_services_or_the_workers_service() -> None:
    # service a's object a<s1> is service b's b<s2> when b = a + s1 minus its ending s2: b ends in that difference
    service = a_service("chat", min_replicas=5, rollout={"canaryPercent": 20})
    suffixes = {(made["kind"], made["metadata"]["name"].removeprefix("chat")) for made in owned_objects(service)}
    endings = {
        longer[: len(longer) - len(shorter)]
        for kind, longer in suffixes
        for other, shorter in suffixes
        if kind == other and longer != shorter and longer.endswith(shorter)
    }
    assert endings  # the rule below has something to check
    rule = next(r for r in name_rules() if "endsWith" in r)
    refused = re.findall(r"'(-[-a-z]+)'", rule)
    assert all(any(ending.endswith(r) for r in refused) for ending in endings), (endings, rule)
    assert f"self != '{pods.WORKERS_SERVICE}'" in rule  # the TrainingJobs' headless Service in each namespace
