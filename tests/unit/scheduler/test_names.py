"""The fast path: node names looked up from the request's JSON text, and answers joined from per-node fragments.

Whatever a request holds, the fast path gives either exactly what the ordinary path (decode everything, look
each name up in a dict, encode dicts with orjson) gives, or nothing and the ordinary path answers. These tests
pin both halves: the name table against a dict on random caches and requests (including names that are not
plain JSON text, repeats, unknown names and damaged text), and the extender's answers byte for byte.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scheduler_builders import a_node

from strata_scheduler.columns import key_json
from strata_scheduler.fastpath.names import NameTable, plain
from strata_scheduler.fastpath.wire import filter_result_json, names_json, object_json
from strata_scheduler.protocol import ExtenderArgs, filter_result
from strata_scheduler.state import ClusterState

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=200, deadline=None)

PLAIN_NAMES = st.sampled_from(
    ["a", "n1", "n2", "gpu-node-0001", "gpu-node-0002", "ip-10-0-1-23.ec2.internal", "ip-10-0-2-23.ec2.internal"]
)
ODD_NAMES = st.sampled_from(['quo"te', "back\\slash", "ünï", "tab\tname", "x" * 300, "", "n1 ", "1234567"])
NAMES = st.one_of(PLAIN_NAMES, ODD_NAMES, st.text(alphabet="abc-.0123456789", min_size=1, max_size=40))


def expected_rows(state: ClusterState, names: list[str]) -> list[int] | None:
    index = state.columns.index
    if len(set(names)) != len(names) or not all(name in index and plain(name) for name in names):
        return None
    return [index[name] for name in names]


@PROPERTY
@given(
    events=st.lists(st.tuples(st.booleans(), NAMES), max_size=60),
    request_names=st.lists(NAMES, max_size=30),
    use_early=st.booleans(),
)
def test_the_name_table_finds_exactly_the_rows_a_dict_finds(
    events: list[tuple[bool, str]], request_names: list[str], use_early: bool
) -> None:
    state = ClusterState()
    for position, (add, name) in enumerate(events):
        if add:
            state.upsert_node(a_node(name).h100().build())
        else:
            state.delete_node(name)
        if use_early and position == len(events) // 2:
            state.columns.rows_json(b"")  # build the table midway: the rest arrives by add and remove
    cached = list(state.columns.index)
    names = [*request_names, *cached[: len(request_names) % 7]]
    rows = state.columns.rows_json(orjson.dumps(names)[1:-1])
    expected = expected_rows(state, names)
    assert (rows.tolist() if rows is not None else None) == expected


@PROPERTY
@given(
    cached=st.lists(NAMES, min_size=1, max_size=20, unique=True),
    data=st.data(),
    drop=st.integers(0, 3),
    insert=st.sampled_from([b"", b",", b'"', b" ", b"x", b"\\", b'","', b"\x00"]) | st.binary(max_size=4),
)
def test_the_name_table_never_answers_for_text_that_is_not_exactly_known_names(
    cached: list[str], data: Any, drop: int, insert: bytes
) -> None:
    state = ClusterState()
    for name in cached:
        state.upsert_node(a_node(name).h100().build())
    request_names = data.draw(st.lists(st.sampled_from(cached) | NAMES, max_size=12))
    text = orjson.dumps(request_names)[1:-1]
    cut = data.draw(st.integers(0, len(text)))
    damaged = text[:cut] + insert + text[cut + drop :]
    rows = state.columns.rows_json(damaged)
    if rows is None:
        return
    names = orjson.loads(b"[" + damaged + b"]")  # an answer means the text is a valid array ...
    assert rows.tolist() == expected_rows(state, names)  # ... of distinct, cached, plain names


@pytest.mark.parametrize(
    "text",
    [
        b'"a"x"b"',
        b'"a";"b"',
        b'"a",,"b"',
        b'"a" ,"b"',
        b'"a","b",',
        b',"a","b"',
        b'"a","b',
        b'a","b"',
        b'"a\\","b"',
        b'"a","b"]',
        b'"a"',
        b'"b","a","b"',
        b'"a","c"',
        b'"A","b"',
        b" ",
    ],
)
def test_the_name_table_takes_nothing_but_the_exact_text_of_distinct_cached_names(text: bytes) -> None:
    state = ClusterState()
    for name in ("a", "b"):
        state.upsert_node(a_node(name).h100().build())
    expected = [0] if text == b'"a"' else None
    rows = state.columns.rows_json(text)
    assert (rows.tolist() if rows is not None else None) == expected
    assert state.columns.rows_json(b'"a","b"') is not None


def test_the_table_grows_and_reuses_rows() -> None:
    state = ClusterState()
    for index in range(300):
        state.upsert_node(a_node(f"n{index}").h100().build())
        if index == 10:
            assert state.columns.rows_json(b'"n3"') is not None
    for index in range(0, 300, 3):
        state.delete_node(f"n{index}")
    for index in range(100):
        state.upsert_node(a_node(f"new-{index}-with-a-much-longer-name-than-before").h100().build())
    names = [name for name in state.columns.index]
    rows = state.columns.rows_json(orjson.dumps(names)[1:-1])
    assert rows is not None
    assert rows.tolist() == [state.columns.index[name] for name in names]
    assert state.columns.rows_json(b'"n0"') is None  # deleted
    assert NameTable([]).rows(b"") is not None


ODD_KEYS = ['quo"te', "back\\slash", "ünïcode", "", "tab\tname", "</script>", "\u2028"]


@pytest.mark.parametrize("runs", ["one sentence", "long runs", "short runs"])
def test_answer_fragments_join_to_what_orjson_writes(runs: str) -> None:
    names = ["h100-spot", *ODD_KEYS, *(f"n{index}" for index in range(40))]
    sentences = ["pod needs 4 nvidia.com/gpu", 'a "quoted" reason', "ü", "", "\n"]
    if runs == "one sentence":
        ids = [1] * len(names)
    elif runs == "long runs":
        ids = [index // 10 % len(sentences) for index in range(len(names))]
    else:
        ids = [index * 7 % len(sentences) for index in range(len(names))]
    values = np.array(ids, dtype=np.int64)
    texts = [orjson.dumps(sentence) for sentence in sentences]
    keys = np.array([key_json(name) for name in names], dtype=object)
    expected = dict(zip(names, [sentences[i] for i in ids], strict=True))
    assert object_json(keys, values, texts) == orjson.dumps(expected)
    assert object_json(keys[:1], values[:1], texts) == orjson.dumps({names[0]: sentences[ids[0]]})
    assert object_json(keys[:0], values[:0], texts) == b"{}"
    passed = np.array([orjson.dumps(name) for name in names], dtype=object)
    assert b"[" + names_json(passed) + b"]" == orjson.dumps(names)
    args = ExtenderArgs(pod={}, node_names=names, nodes=None)
    failed = {name: expected[name] for name in names[:3]}
    unresolvable = {name: expected[name] for name in names[3:]}
    written = filter_result_json(
        names_json(passed[:2]), object_json(keys[:3], values[:3], texts), object_json(keys[3:], values[3:], texts)
    )
    assert written == filter_result(args, names[:2], failed, unresolvable)


def go_body(pod: dict[str, Any], names: list[str]) -> bytes:
    """ExtenderArgs as kube-scheduler's Go encoder writes them: field order, no spaces."""
    return orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": names})
