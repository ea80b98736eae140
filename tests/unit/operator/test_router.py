"""An InferenceService's router (strata_operator.core.router): its Deployment and Services, the settings it is
started with, and how its scaling decisions become the replica count and the status (pure, no cluster)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from operator_builders import T0, a_pool
from serving_builders import a_service

import strata_api as api
from strata_api.serving import LABEL_ROUTER, ScaleForecast, ScaleReport
from strata_operator.core import router, serving
from strata_operator.core.serving import ModelSource, ObservedDeployment
from strata_operator.settings import OperatorSettings
from strata_serving.autoscale import Metric, Mode
from strata_serving.router_settings import ENV_PREFIX as ROUTER_ENV_PREFIX
from strata_serving.router_settings import RouterSettings, load_router_settings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

SETTINGS = OperatorSettings(router_image="registry.example/strata/serving:1")
CPU_POOL = a_pool("pool", max_gpus=0, maxCPUs=8, capacityTypes=["on-demand", "reserved"])
SOURCE = ModelSource(checkpoint="", reason="RandomWeights", message="preset debug with random weights")
RPS = {"metric": "rps", "target": 4, "mode": "predictive", "horizonSeconds": 90}


def autoscaled(name: str = "chat", low: int = 1, high: int = 6, **scaling: Any) -> api.InferenceService:
    return a_service(name, min_replicas=low, max_replicas=high, autoscaling={**RPS, **scaling})


def a_report(replicas: int, time: str = "2026-01-01T12:00:15Z", reason: str = "Forecast") -> ScaleReport:
    return ScaleReport(
        time=time,
        mode="predictive",
        replicas=replicas,
        reason=reason,
        message=f"forecast upper band needs {replicas}",
        observed_rps=7.5,
        ready=2,
        starting=0,
        forecast=ScaleForecast(mean=9.0, lower=6.0, upper=11.0, horizon_s=120.0, method="seasonal"),
    )


def test_the_main_service_points_at_the_routers_and_the_routers_at_the_replicas() -> None:
    service = a_service("chat")
    routers = router.build_router_deployment(service, SETTINGS)
    router_pods = routers["spec"]["template"]["metadata"]["labels"]
    replica_pods = serving.build_deployment(service, CPU_POOL, SOURCE, 1, SETTINGS)["spec"]["template"]
    front = router.build_front_service(service)
    headless = serving.build_replicas_service(service)
    assert front["metadata"]["name"] == "chat"  # the URL in status: the same name and port as before the router
    assert front["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert front["spec"]["selector"].items() <= router_pods.items()
    assert not front["spec"]["selector"].items() <= replica_pods["metadata"]["labels"].items()
    # neither Deployment, budget nor Service selects the other's pods
    assert not serving.selector(service).items() <= router_pods.items()
    assert routers["spec"]["selector"]["matchLabels"] == {LABEL_ROUTER: "chat", api.LABEL_MANAGED_BY: api.MANAGED_BY}
    assert headless["spec"]["selector"].items() <= replica_pods["metadata"]["labels"].items()
    env = {e["name"]: e["value"] for e in routers["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["STRATA_ROUTER_REPLICAS_DNS"] == "chat-replicas.team.svc:8000"
    assert env["STRATA_ROUTER_PORT"] == str(router.ROUTER_PORT)
    assert (
        router.build_router_budget(service)["spec"]["selector"]["matchLabels"]
        == routers["spec"]["selector"]["matchLabels"]
    )


def test_the_router_deployment_runs_two_spread_routers_of_the_serving_image() -> None:
    routers = router.build_router_deployment(a_service("chat"), SETTINGS)
    assert routers["metadata"]["name"] == "chat-router"
    assert routers["metadata"]["ownerReferences"][0]["uid"] == "uid-chat"
    assert routers["metadata"]["labels"][api.LABEL_INFERENCE_SERVICE] == "chat"  # the operator's watch finds it
    assert routers["spec"]["replicas"] == 2
    pod = routers["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/strata/serving:1"
    assert container["command"] == ["python", "-m", "strata_serving.router"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "lead", "mountPath": router.LEAD_MOUNT, "readOnly": True},
    ]
    assert pod["volumes"][1] == {"name": "lead", "configMap": {"name": "chat-router", "optional": True}}
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == ["kubernetes.io/hostname", api.NODE_ZONE]
    assert pod["automountServiceAccountToken"] is False
    assert "nodeSelector" not in pod
    # told to stop, a router answers through its shutdown delay, then drains what is in flight; the kubelet waits
    stopping = load_router_settings([], env={e["name"]: e["value"] for e in container["env"]})
    assert (stopping.shutdown_delay_s, stopping.drain_s) == (5.0, 25.0)
    assert pod["terminationGracePeriodSeconds"] > stopping.shutdown_delay_s + stopping.drain_s
    placed = OperatorSettings.from_args(["--router-node-selector", "strata.dev/real-node=true"])
    pod = router.build_router_deployment(a_service("chat"), placed)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"strata.dev/real-node": "true"}  # where the chart runs Strata's own pods


def test_a_changed_router_setting_rolls_the_routers() -> None:
    service = a_service("chat")
    before = router.build_router_deployment(service, SETTINGS)
    observed = ObservedDeployment.from_body(before)
    assert not serving.needs_update(before, observed)
    after = router.build_router_deployment(service, dataclasses.replace(SETTINGS, router_image="other:2"))
    assert serving.needs_update(after, observed)


@pytest.mark.parametrize("horizon", [None, 45], ids=["measured-lead", "spec-horizon"])
def test_measuring_the_startup_changes_the_routers_configmap_and_never_their_pods(horizon: int | None) -> None:
    scaling = {k: v for k, v in RPS.items() if k != "horizonSeconds"} | ({"horizonSeconds": horizon} if horizon else {})
    service = a_service("chat", min_replicas=1, max_replicas=6, autoscaling=scaling)
    # the routers' Deployment is built without the measurement, so its template (what rolls the routers when it
    # changes) cannot follow it; the lead goes in the ConfigMap the routers mount instead
    deployment = router.build_router_deployment(service, SETTINGS)
    configs = [router.build_router_config(service, measured) for measured in (None, 40.0, 90.0)]
    leads = [config["data"][router.LEAD_KEY] for config in configs]
    assert leads == (["45"] * 3 if horizon else ["60", "45", "90"])  # the spec's horizon wins, else measured
    config = configs[0]
    assert (config["kind"], config["metadata"]["name"]) == ("ConfigMap", "chat-router")
    assert config["metadata"]["ownerReferences"][0]["uid"] == "uid-chat"  # goes with the service
    assert config["metadata"]["labels"][api.LABEL_INFERENCE_SERVICE] == "chat"  # the operator's watch finds it
    mounted = deployment["spec"]["template"]["spec"]
    volume = next(v for v in mounted["volumes"] if v.get("configMap"))
    mount = next(m for m in mounted["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    env = {e["name"]: e["value"] for e in mounted["containers"][0]["env"]}
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert env["STRATA_ROUTER_AUTOSCALE_STARTUP_FILE"] == f"{mount['mountPath']}/{router.LEAD_KEY}"
    assert serving.drifted(configs[2], configs[0]["data"], "data") is (horizon is None)  # a new lead is written
    assert not serving.drifted(configs[2], configs[2]["data"], "data")
    assert serving.drifted(configs[2], None, "data")  # missing: made


def test_every_router_setting_the_operator_sets_is_one_the_router_reads_and_accepts() -> None:
    service = autoscaled(low=2, high=9, mode="reactive", scaleDownStabilizationSeconds=120)
    env = router.router_env(service, SETTINGS)
    fields = {f.name.upper() for f in dataclasses.fields(RouterSettings)}
    assert router.ROUTER_ENV_PREFIX == ROUTER_ENV_PREFIX
    assert {name.removeprefix(ROUTER_ENV_PREFIX) for name in env} <= fields
    policy = load_router_settings([], env=env).scaling_policy()
    assert (policy.mode, policy.metric, policy.target) == (Mode.REACTIVE, Metric.RPS, 4.0)
    assert (policy.min_replicas, policy.max_replicas) == (2, 9)
    assert policy.stabilisation_s == 120.0
    # the lead (the spec's horizon, 90 s) reaches it by the file of its ConfigMap, not by the environment
    assert load_router_settings([], env=env).autoscale_startup_file == router.LEAD_FILE
    assert router.build_router_config(service, None)["data"] == {router.LEAD_KEY: "90"}
    assert load_router_settings([], env=env).autoscale_peers == SETTINGS.router_replicas


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        (a_service("plain", min_replicas=2, max_replicas=5), False),
        (autoscaled(metric="concurrency"), True),
        (autoscaled(metric="p99Latency", target=0.5), True),
        (autoscaled(low=3, high=3), False),  # nothing to decide
        (autoscaled(), True),
    ],
    ids=["no-autoscaling", "concurrency", "p99Latency", "min-equals-max", "rps"],
)
def test_a_service_with_autoscaling_and_room_is_autoscaled(service: api.InferenceService, expected: bool) -> None:
    assert router.autoscaled(service) is expected
    assert ("STRATA_ROUTER_AUTOSCALE_MODE" in router.router_env(service, SETTINGS)) is expected


def test_the_router_is_told_the_services_metric_and_target() -> None:
    for metric, target in (("concurrency", 3.0), ("p99Latency", 0.25)):
        env = router.router_env(autoscaled(metric=metric, target=target), SETTINGS)
        policy = load_router_settings([], env=env).scaling_policy()
        assert (policy.metric.value, policy.target) == (metric, target)


def test_the_wanted_count_is_the_routers_decision_within_min_and_max_else_the_last_applied_else_min() -> None:
    service = autoscaled(low=2, high=6)
    assert router.wanted_replicas(service, a_report(4), {}) == 4
    assert router.wanted_replicas(service, a_report(9), {}) == 6
    assert router.wanted_replicas(service, a_report(0), {}) == 2
    # the router away or restarting: the last decision holds, never a drop to min
    assert router.wanted_replicas(service, None, {"lastScale": {"requested": 5}}) == 5
    assert router.wanted_replicas(service, None, {}) == 2
    assert router.wanted_replicas(a_service("plain", min_replicas=2, max_replicas=5), a_report(4), {}) == 2


def test_the_pool_quota_cuts_what_the_autoscaler_asks_for() -> None:
    older, newer = autoscaled("older", high=8), autoscaled("newer", high=8)
    newer = dataclasses.replace(newer, created=T0.replace(hour=13))
    allotted = serving.allot([older, newer], {"pool": CPU_POOL}, [], {older.key: 6, newer.key: 4})
    assert allotted[older.key].replicas == 6  # 1 CPU each, 8 in the pool: the older service first
    assert allotted[newer.key].replicas == 2
    assert allotted[newer.key].limited
    assert "2 of 4 replicas (the autoscaler's decision)" in allotted[newer.key].message


def test_a_decision_becomes_the_desired_count_last_scale_and_an_event_once() -> None:
    service = autoscaled(high=8)
    within = serving.Allotment(4, False, "WithinQuota", "pool pool's quota holds 4 replicas")
    stored = {"desiredReplicas": 2}
    draft = serving.service_status(service, stored, SOURCE, within, None, "r1", T0, a_report(4))
    patch = draft.patch()
    assert patch["desiredReplicas"] == 4
    assert patch["lastScale"] == {
        "time": "2026-01-01T12:00:15Z",
        "replicas": 4,
        "requested": 4,
        "reason": "Forecast",
        "message": "forecast upper band needs 4",
        "mode": "predictive",
        "observedRate": 7.5,
        "metric": "rps",
        "forecast": 9.0,
        "forecastLower": 6.0,
        "forecastUpper": 11.0,
        "forecastMethod": "seasonal",
    }
    assert [(e.reason, e.message) for e in draft.events] == [
        ("ScaledUp", "2 -> 4 replicas: forecast upper band needs 4")
    ]
    # posted once, before the write, as the change from the stored count and its last decision (none here): the
    # next change moves from the lastScale this write stores, so it is another moment
    assert draft.events[0].once == "s0"
    six = serving.Allotment(6, False, "WithinQuota", "pool pool's quota holds 6 replicas")
    at_noon = a_report(6, time="2026-01-01T12:01:00Z")
    then = serving.service_status(service, {**stored, **patch}, SOURCE, six, None, "r1", T0, at_noon)
    assert [(e.reason, e.once) for e in then.events] == [("ScaledUp", f"s{int(T0.timestamp()) + 15}")]
    later = a_report(4, time="2026-01-01T12:00:30Z")
    again = serving.service_status(service, {**stored, **patch}, SOURCE, within, None, "r1", T0, later)
    assert "lastScale" not in again.patch()  # the same decision, made again an interval later, is not news
    assert [e.reason for e in again.events if e.reason.startswith("Scaled")] == []


def test_a_decision_the_quota_cuts_says_so_and_scales_down_with_an_event() -> None:
    service = autoscaled(high=8)
    cut = serving.Allotment(3, True, "WaitingForQuota", "3 of 5 replicas (the autoscaler's decision): ...")
    draft = serving.service_status(service, {"desiredReplicas": 4}, SOURCE, cut, None, "r1", T0, a_report(5))
    patch = draft.patch()
    assert (patch["desiredReplicas"], patch["lastScale"]["replicas"], patch["lastScale"]["requested"]) == (3, 3, 5)
    assert patch["lastScale"]["reason"] == "WaitingForQuota"
    assert ("ScaledDown", "4 -> 3 replicas: 3 of 5 replicas (the autoscaler's decision): ...") in [
        (e.reason, e.message) for e in draft.events
    ]


def test_a_selector_key_the_operator_dropped_is_removed_by_the_patch() -> None:
    service = a_service("chat")
    front = router.build_front_service(service)
    before = {"type": "ClusterIP", "selector": serving.selector(service), "ports": front["spec"]["ports"]}
    assert serving.drifted(front, before)
    patch = serving.spec_patch(front, before)
    assert patch["selector"] == {api.LABEL_INFERENCE_SERVICE: None, **router.router_selector(service)}


def test_a_scale_url_override_serves_out_of_cluster_runs() -> None:
    service = autoscaled("chat")
    assert router.scale_url(service, SETTINGS, 3) == "http://chat.team.svc:8000/scale?applied=3"
    local = OperatorSettings.from_args([], env={"STRATA_OPERATOR_ROUTER_URLS": "team/chat=http://127.0.0.1:9/"})
    assert router.scale_url(service, local, 0) == "http://127.0.0.1:9/scale?applied=0"
    assert router.scale_url(autoscaled("other"), local, 2) == "http://other.team.svc:8000/scale?applied=2"


def test_the_routers_of_a_service_that_scales_to_zero_hold_a_request_for_the_first_replica() -> None:
    held = load_router_settings([], env=router.router_env(autoscaled(low=0, high=3), SETTINGS))
    assert held.hold_s == router.SCALE_FROM_ZERO_HOLD_S  # the autoscaler orders one; the request waits for it
    assert load_router_settings([], env=router.router_env(autoscaled(low=1, high=3), SETTINGS)).hold_s == 0
