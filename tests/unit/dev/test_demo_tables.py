"""What ``make demo`` prints about the fleet and the jobs: exact tables from API objects, costs by the shared
per-GPU price formula."""

from __future__ import annotations

from typing import Any

import strata_api as api
from strata_api.catalog import Catalog
from strata_dev.fleet import DEFAULT_FLEET, load_fleet, node_manifests
from strata_dev.tables import node_table, placement_table

PRICES = Catalog(
    prices={"p5.48xlarge": {"spot": 40.0, "reserved": 80.0}},
    throughput={},
    power={"us-east-1b": (0.5,) * 24},
)


def fleet_nodes(*names: str, ready: bool = True) -> list[dict[str, Any]]:
    """Nodes of the default fleet as the API server returns them once kwok has taken them over."""
    by_name = {n["metadata"]["name"]: n for n in node_manifests(load_fleet(DEFAULT_FLEET))}
    nodes = [by_name[name] for name in names]
    for node in nodes:
        node["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return nodes


def lines(table: str) -> list[str]:
    """The table's lines without the padding of the last column."""
    return [line.rstrip() for line in table.splitlines()]


def a_worker(job: str, node: str | None, gpus: int = 8, name: str = "") -> dict[str, Any]:
    limits = {api.NVIDIA_GPU: str(gpus)}
    spec: dict[str, Any] = {"containers": [{"name": "worker", "resources": {"limits": limits, "requests": limits}}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": {"name": name or f"{job}-w0", "labels": {api.LABEL_JOB: job}}, "spec": spec}


def a_job(name: str, pool: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"pool": pool}, "status": status}


def test_the_node_table_shows_gpu_capacity_instance_zone_and_readiness() -> None:
    nodes = fleet_nodes("h100-spot-0000", "mi300x-reserved-0001") + fleet_nodes("cpu-0000", ready=False)
    assert lines(node_table(nodes)) == [
        "NAME                  GPU     GPUS  CAPACITY   INSTANCE-TYPE               ZONE        READY",
        "cpu-0000              -       0     on-demand  m7i.8xlarge                 us-east-1a  NotReady",
        "h100-spot-0000        H100    8     spot       p5.48xlarge                 us-east-1b  Ready",
        "mi300x-reserved-0001  MI300X  8     reserved   Standard_ND96isr_MI300X_v5  us-east-1a  Ready",
    ]


def test_placement_costs_each_workers_gpus_at_its_nodes_gpu_price_and_the_zones_hour() -> None:
    nodes = fleet_nodes("h100-spot-0000", "h100-spot-0001", "h100-reserved-0000")
    pods = [
        a_worker("moe-spot", "h100-spot-0000"),
        a_worker("moe-spot", "h100-spot-0001", gpus=4, name="moe-spot-w1"),
        a_worker("debug", "h100-reserved-0000", gpus=2),
        a_worker("finetune", None),
        a_worker("gone", "deleted-node"),
    ]
    jobs = [
        a_job("moe-spot", "spot", phase="Running"),
        a_job("debug", "reserved", phase="Running"),
        a_job("finetune", "reserved", phase="Queued", queuePosition=1),
        a_job("gone", "spot", phase="Restarting"),
    ]
    # moe-spot: 12 GPUs x $40/8 x 0.5 (us-east-1b) = 30; debug: 2 GPUs x $80/8 x 1.0 (default power) = 20
    assert lines(placement_table(jobs, pods, nodes, PRICES, hour_utc=3)) == [
        "JOB       POOL      PHASE             GPU   CAPACITY  NODES                          $/HOUR",
        "moe-spot  spot      Running           H100  spot      h100-spot-0000,h100-spot-0001  30.00",
        "debug     reserved  Running           H100  reserved  h100-reserved-0000             20.00",
        "finetune  reserved  Queued (queue 1)  -     -         -                              -",
        "gone      spot      Restarting        -     -         -                              -",
    ]


def test_a_node_the_catalog_does_not_price_costs_nothing_but_still_shows_where_the_job_runs() -> None:
    nodes = fleet_nodes("mi300x-spot-0000")
    pods = [a_worker("moe", "mi300x-spot-0000")]
    table = placement_table([a_job("moe", "spot", phase="Running")], pods, nodes, PRICES, hour_utc=0)
    assert table.splitlines()[1].split() == ["moe", "spot", "Running", "MI300X", "spot", "mi300x-spot-0000", "0.00"]
