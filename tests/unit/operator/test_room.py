"""Admission's room: free GPUs bucketed by node kind and free amount, built straight from a pass's fleet."""

from __future__ import annotations

from strata_api import GPUType
from strata_operator.core.observed import Node
from strata_operator.core.room import Room

H100, MI300X = GPUType.H100, GPUType.MI300X


def a_node(name: str, gpu_type: GPUType, capacity: str) -> Node:
    return Node(name, gpu_type, capacity, 8, schedulable=True, price_per_hour=None)


def test_a_room_buckets_each_node_by_kind_and_free_gpus_and_moves_it_as_gpus_are_taken() -> None:
    nodes = [
        a_node("a", H100, "reserved"),
        a_node("b", H100, "reserved"),
        a_node("c", H100, "spot"),
        a_node("d", MI300X, "reserved"),
    ]
    room = Room(nodes, {"a": 8, "b": 3, "c": 8, "d": -1})  # a node over-committed counts as full; e unknown
    assert room.buckets == {
        (H100, "reserved"): {8: {"a"}, 3: {"b"}},
        (H100, "spot"): {8: {"c"}},
        (MI300X, "reserved"): {0: {"d"}},
    }
    assert room.free == {"a": 8, "b": 3, "c": 8, "d": 0}
    assert room.slots(H100, ("reserved", "spot"), 4) == 4  # two groups of 4 on a, two on c, none on b
    assert room.free_gpus(H100, "reserved") == 11
    assert room.take(H100, ("reserved",), 2, 2) == {"b": 2, "a": 2}  # best fit: the fullest usable node first
    assert room.free == {"a": 6, "b": 1, "c": 8, "d": 0}
    assert room.buckets[H100, "reserved"] == {1: {"b"}, 6: {"a"}}
