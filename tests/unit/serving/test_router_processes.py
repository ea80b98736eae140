"""The router as a real process in front of real replica processes on loopback: the stand-in replica of
``tests/support/fake_replica.py`` (configurable delay, failure, hang; killed or drained for real) and the workload
server itself (``python -m strata_workloads.serve`` on the tiny ``debug`` model)."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson
import pytest
from router_support import (
    Answer,
    Process,
    Processes,
    exchange,
    free_port,
    metrics,
    post,
    refusal,
    seconds_until_closed,
    total,
    wait_ready,
    wait_routable,
)

pytestmark = pytest.mark.timeout(120)

GENERATE = {"prompt": "def main(", "max_new_tokens": 4}


async def started(*processes: Process, routers: tuple[Process, ...] = ()) -> None:
    """Until every process answers /readyz and each router counts every ready replica as routable."""
    await asyncio.gather(*(wait_ready(process) for process in processes))
    for router in routers:
        await wait_ready(router)
        await wait_routable(router, len(processes))


async def load(
    session: aiohttp.ClientSession, router: Process, requests: int, concurrency: int, path: str = "/v1/generate"
) -> list[Answer]:
    """``requests`` requests through the router, ``concurrency`` at a time."""
    answers: list[Answer] = []
    queue = iter(range(requests))

    async def client() -> None:
        for _ in queue:
            answers.append(await post(session, router.url + path, GENERATE))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers


async def test_traffic_avoids_a_slow_replica_that_round_robin_keeps_feeding(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    fast = [processes.fake_replica(f"fast{i}", "--delay", "0.02", "--slots", "8") for i in range(2)]
    slow = processes.fake_replica("slow", "--delay", "0.8", "--slots", "8")
    replicas = [replica.address for replica in [*fast, slow]]
    least_loaded = processes.router(replicas, name="least-loaded")
    round_robin = processes.router(replicas, "--policy", "round-robin", name="round-robin")
    await started(*fast, slow, routers=(least_loaded, round_robin))

    by_policy = {}
    for router in (least_loaded, round_robin):
        answers = await load(session, router, requests=90, concurrency=6)
        assert all(answer.status == 200 for answer in answers)
        by_policy[router.name] = Counter(answer.replica for answer in answers)[slow.address]
    # least-loaded measures the slow replica once or twice and then sends it work only when the fast ones queue
    # up; round-robin gives it a third of the requests, which is what makes its tail latency
    assert by_policy["least-loaded"] <= 9, by_policy
    assert by_policy["round-robin"] == 30, by_policy


async def test_traffic_leaves_a_replica_whose_node_stalls_and_comes_back_when_the_stall_ends(
    processes: Processes, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    pressure = tmp_path / "pressure"
    pressure.write_text("0.9")  # its node stalled on CPU 90% of the last 10 s
    calm = processes.fake_replica("calm", "--delay", "0.05", "--slots", "8")
    stalled = processes.fake_replica(
        "stalled", "--delay", "0.05", "--slots", "8", "--node-pressure-file", str(pressure)
    )
    router = processes.router([calm.address, stalled.address], "--probe-interval-s", "0.2")
    await started(calm, stalled, routers=(router,))
    await asyncio.sleep(1.0)  # a few probes: the router has read the pressure

    # Both answer in 50 ms; priced at 10x its wait, the stalled node's replica is worth a request only when the
    # calm one has 9 ahead of it, which 4 clients never make.
    answers = await load(session, router, requests=60, concurrency=4)
    assert all(answer.status == 200 for answer in answers)
    assert Counter(answer.replica for answer in answers)[stalled.address] <= 2

    pressure.write_text("0.0")
    await asyncio.sleep(1.0)
    answers = await load(session, router, requests=60, concurrency=4)
    assert all(answer.status == 200 for answer in answers)
    assert Counter(answer.replica for answer in answers)[stalled.address] >= 15


async def test_a_replica_killed_mid_load_loses_no_request(processes: Processes, session: aiohttp.ClientSession) -> None:
    replicas = [processes.fake_replica(f"r{i}", "--delay", "0.05", "--slots", "4") for i in range(3)]
    router = processes.router([replica.address for replica in replicas])
    await started(*replicas, routers=(router,))

    loading = asyncio.create_task(load(session, router, requests=240, concurrency=9))
    await asyncio.sleep(0.6)
    replicas[0].kill()
    answers = await loading

    assert [answer.status for answer in answers] == [200] * 240
    assert replicas[0].address not in {answer.replica for answer in answers[-60:]}
    assert any(answer.attempts > 1 for answer in answers), "the kill caught no request in flight"
    samples = await metrics(router)
    broken = sum(
        total(samples, "strata_router_attempts_total", replica=replicas[0].address, outcome=outcome)
        for outcome in ("reset", "connect_failed")
    )
    assert broken >= 1  # requests met the dead replica (in flight at the kill, or before its probe failed)
    assert total(samples, "strata_router_replicas", state="routable") == 2
    assert total(samples, "strata_router_failovers_total") >= 1
    assert total(samples, "strata_router_requests_total") == 240  # each client request counted once


async def test_a_draining_replica_gets_no_new_requests_and_none_fails(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replicas = [processes.fake_replica(f"r{i}", "--delay", "0.05", "--slots", "4") for i in range(2)]
    router = processes.router([replica.address for replica in replicas])
    await started(*replicas, routers=(router,))

    loading = asyncio.create_task(load(session, router, requests=120, concurrency=6))
    await asyncio.sleep(0.5)
    replicas[0].terminate()
    answers = await loading
    assert [answer.status for answer in answers] == [200] * 120


async def test_a_hung_replica_times_out_and_the_request_is_answered_by_another(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    hung = processes.fake_replica("hung", "--hang")
    healthy = processes.fake_replica("healthy")
    router = processes.router([hung.address, healthy.address], "--upstream-timeout-s", "0.5", "--policy", "round-robin")
    await started(hung, healthy, routers=(router,))

    answers = [await post(session, router.url + "/v1/generate", GENERATE) for _ in range(4)]
    assert {answer.status for answer in answers} == {200}
    assert {answer.replica for answer in answers} == {healthy.address}
    assert any(answer.attempts == 2 and 0.5 <= answer.seconds < 5 for answer in answers)
    assert total(await metrics(router), "strata_router_attempts_total", outcome="timeout") >= 1


async def test_the_retry_budget_caps_retries_when_every_replica_fails(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    failing = [processes.fake_replica(f"f{i}", "--fail-status", "500") for i in range(2)]
    flags = ["--retry-ratio", "0.1", "--retry-floor-per-s", "0.1", "--retry-window-s", "60"]
    router = processes.router([replica.address for replica in failing], *flags, "--eject-after-failures", "1000")
    await started(*failing, routers=(router,))

    answers = [await post(session, router.url + "/v1/predict", {"text": "import os"}) for _ in range(40)]
    # allowance after 40 requests: floor(0.1 x 40 + 0.1 x 60) = 10 retries, never one per request
    assert {answer.status for answer in answers} == {500}  # the replica's own answer, passed through
    assert sum(answer.attempts == 2 for answer in answers) == 10
    samples = await metrics(router)
    assert total(samples, "strata_router_retries_total") == 10
    assert total(samples, "strata_router_retries_denied_total") == 30


async def test_a_replica_that_answers_garbage_gets_a_502_that_keeps_the_clients_headers_to_itself(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    garbled = processes.fake_replica("garbled", "--garbage")
    router = processes.router([garbled.address])
    await started(garbled, routers=(router,))

    secret = "Bearer do-not-log-me"
    headers = {"Authorization": secret}
    async with session.post(router.url + "/v1/generate", json=GENERATE, headers=headers) as response:
        assert response.status == 502
        answer = await response.text()
    assert "connection broken: ClientResponseError" in answer
    await asyncio.sleep(0.2)  # the ejection's warning, if any, is written
    assert "do-not-log-me" not in answer
    assert "do-not-log-me" not in router.log.read_text()


async def test_503_with_a_reason_when_no_replica_can_take_the_request(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    warming = processes.fake_replica("warming", "--ready-after", "600")
    draining = processes.fake_replica("draining", "--linger-s", "60")
    doomed = processes.fake_replica("doomed")
    nobody = processes.router([warming.address], name="nobody-ready")
    undiscovered = processes.router([], "--replicas-dns", "no-such-replicas.invalid:8000", name="undiscovered")
    drained = processes.router([draining.address], name="drained")
    # probes every 30 s: the kill is found by the request that meets the closed port, not by a probe; so the router
    # starts once its replica answers, or its first probe could find the replica not yet listening
    await wait_ready(doomed)
    ejecting = processes.router([doomed.address], "--probe-interval-s", "30", name="ejecting")
    await started(doomed, routers=(ejecting,))
    await started(draining, routers=(drained,))
    await wait_ready(warming, path="/healthz")
    await wait_ready(nobody)
    await wait_ready(undiscovered)

    async def refused(router: Process, path: str = "/v1/generate") -> tuple[str, str | None]:
        async with session.post(router.url + path, json=GENERATE) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            return refusal(path, 503, orjson.loads(await response.read()))

    assert (await refused(undiscovered))[1] == "no replica discovered"
    assert (await refused(nobody))[1] == "no replica ready yet"
    # the same reason in OpenAI's error shape (as its code) to a client of OpenAI's API
    assert await refused(nobody, "/v1/completions") == ("no replica can take the request", "no replica ready yet")
    doomed.kill()
    message, reason = await refused(ejecting)
    assert reason == "all replicas ejected after failures"
    assert doomed.address in message
    draining.terminate()
    await asyncio.sleep(1.2)  # two probes
    assert (await refused(drained))[1] == "all replicas draining"
    async with session.get(drained.url + "/readyz") as response:
        assert response.status == 200  # the router itself is up: it answers, and says why it cannot serve


async def test_an_ejected_replica_comes_back_through_a_probe_once_its_cooldown_is_over(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    failing = processes.fake_replica("failing", "--fail-status", "500")  # its /readyz stays 200
    other = processes.fake_replica("other")
    flags = ["--policy", "round-robin", "--probe-interval-s", "0.2", "--eject-after-failures", "1"]
    router = processes.router([failing.address, other.address], *flags)
    await started(failing, other, routers=(router,))

    answers = [await post(session, router.url + "/v1/generate", GENERATE) for _ in range(4)]
    ejected_by = time.monotonic()
    assert {(answer.status, answer.replica) for answer in answers} == {(200, other.address)}
    assert sorted(answer.attempts for answer in answers) == [1, 1, 1, 2]  # one retry, then it sat out
    assert total(await metrics(router), "strata_router_replicas", state="ejected") == 1
    await wait_routable(router, 2, timeout_s=15)
    assert time.monotonic() - ejected_by >= 1.5  # the probes said ready all along: only the cooldown (2 s) ended
    # round-robin over both again: one of the next two requests meets the failing replica, and is retried
    answers = [await post(session, router.url + "/v1/generate", GENERATE) for _ in range(2)]
    assert sorted((answer.status, answer.attempts) for answer in answers) == [(200, 1), (200, 2)]
    assert total(await metrics(router), "strata_router_ejections_total", replica=failing.address) == 2


async def test_requests_it_will_not_serve_get_a_clear_4xx_in_json_reach_no_replica_and_cost_no_traceback(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replica = processes.fake_replica("r")
    router = processes.router(
        [replica.address], "--max-body-bytes", "1000", "--body-timeout-s", "1", "--idle-timeout-s", "1"
    )
    await started(replica, routers=(router,))

    for method, path, data, status, message in [
        ("POST", "/v1/generate", b"{not json", 400, "the body is not valid JSON: "),
        ("POST", "/v1/completions", b"{not json", 400, "the body is not valid JSON: "),
        ("POST", "/v1/generate", b"[1, 2]", 400, "the body must be a JSON object"),
        ("POST", "/v1/generate", b'{"prompt": "' + b"x" * 2000 + b'"}', 413, "the body is larger than 1000 bytes"),
        ("POST", "/v1/chat/completions", b"{}", 404, "there is no endpoint /v1/chat/completions"),
        ("GET", "/v1/generate", b"", 405, "GET is not allowed on /v1/generate; it takes POST"),
        ("GET", "/v1/completions", b"", 405, "GET is not allowed on /v1/completions; it takes POST"),
    ]:
        async with session.request(method, router.url + path, data=data) as response:
            assert response.status == status
            said, reason = refusal(path, status, await response.json())
            assert said.startswith(message)
            assert (
                reason == {400: "bad request", 413: "bad request", 404: "not found", 405: "method not allowed"}[status]
            )
            assert status != 405 or response.headers["Allow"] == "POST"
    async with session.head(router.url + "/v1/models") as response:  # forwarded as a GET, answered without a body
        assert (response.status, response.headers["x-strata-replica"]) == (200, replica.address)
    # a body that stops coming is refused after the timeout rather than held open
    trickled = b'POST /v1/generate HTTP/1.1\r\nHost: router\r\nContent-Length: 1000\r\n\r\n{"prompt"'
    status, body, seconds = await exchange(router.port, trickled)
    assert (status, orjson.loads(body)["error"]) == (408, "the body did not arrive within 1 s")
    assert 1 <= seconds < 5
    # a body declared over the limit: 413 before a byte of it is read, not a wait for a body that never comes
    announced = b"POST /v1/generate HTTP/1.1\r\nHost: router\r\nContent-Length: 1000000000\r\n\r\n"
    status, body, _ = await exchange(router.port, announced)
    assert (status, orjson.loads(body)) == (
        413,
        {"error": "the body is larger than 1000 bytes", "reason": "bad request"},
    )
    # a head that never ends (a slow-loris client) is cut at the idle timeout, not held for aiohttp's hour
    assert 1 <= await seconds_until_closed(router.port, b"GET /v1/models HTTP/1.1\r\n") < 5
    # a request the parser refuses: aiohttp's 400, and one warning line in the log, not a traceback
    status, _, _ = await exchange(router.port, b"GET /v1/models HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    assert status == 400

    assert (await post(session, router.url + "/v1/generate", GENERATE)).status == 200
    assert total(await metrics(router), "strata_router_attempts_total") == 2  # the HEAD and the last POST
    assert router.popen.poll() is None
    log = router.log.read_text()
    assert "Traceback" not in log
    assert "WARNING aiohttp.server: Error handling request from 127.0.0.1: Invalid character in Content-Length" in log


async def test_an_answer_over_the_limit_is_not_passed_on_and_the_client_gets_502_naming_it(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    # A replica whose answers (chunked, so no Content-Length announces the size) run past the router's limit: the
    # router stops reading at the limit rather than holding the whole answer, and says why.
    huge = processes.fake_replica("huge", "--answer-bytes", "200000")
    router = processes.router([huge.address], "--max-answer-bytes", "100000", "--max-attempts", "1")
    await started(huge, routers=(router,))
    answer = await post(session, router.url + "/v1/generate", GENERATE)
    assert answer.status == 502
    assert orjson.loads(answer.body)["error"] == f"replica {huge.address}: its answer is larger than 100000 bytes"
    assert total(await metrics(router), "strata_router_attempts_total", outcome="server_error") == 1
    # an answer within the limit passes whole
    fits = processes.fake_replica("fits", "--answer-bytes", "90000")
    other = processes.router([fits.address], "--max-answer-bytes", "100000")
    await started(fits, routers=(other,))
    answer = await post(session, other.url + "/v1/generate", GENERATE)
    assert (answer.status, len(answer.body)) == (200, 90000)
    assert orjson.loads(answer.body)["replica"] == "fits"
    assert "Traceback" not in router.log.read_text() + other.log.read_text()


async def test_a_compressed_body_gets_415_and_a_client_that_leaves_mid_body_no_traceback(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replica = processes.fake_replica("r")
    router = processes.router([replica.address])
    await started(replica, routers=(router,))

    # Compressed bodies, valid or not, are refused before a replica sees one: passed on, a body would reach the
    # replica decoded but still labelled gzip, be answered 500, and three such requests would eject the replica.
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    for data in (gzip.compress(orjson.dumps(GENERATE)), b"not gzip") * 2:
        async with session.post(router.url + "/v1/generate", data=data, headers=headers) as response:
            assert response.status == 415
            refused = await response.json()
        assert refused["error"] == "Content-Encoding 'gzip' is not supported: send the body uncompressed"
    # a client that leaves before its body is complete
    _, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b'POST /v1/generate HTTP/1.1\r\nHost: router\r\nContent-Length: 1000\r\n\r\n{"prompt"')
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    assert (await post(session, router.url + "/v1/generate", GENERATE)).status == 200
    samples = await metrics(router)
    assert total(samples, "strata_router_attempts_total") == 1
    assert total(samples, "strata_router_ejections_total") == 0
    assert "Traceback" not in router.log.read_text()


async def test_a_streamed_completion_passes_through_chunk_by_chunk(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replica = processes.fake_replica("streamer", "--delay", "1.0", "--chunks", "5")
    router = processes.router([replica.address])
    await started(replica, routers=(router,))

    arrivals: list[tuple[float, bytes]] = []
    body = {"prompt": "def ", "stream": True}
    async with session.post(router.url + "/v1/completions", json=body) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert response.headers["x-strata-attempts"] == "1"
        async for line in response.content:
            if line.strip():
                arrivals.append((time.monotonic(), line.strip()))
    assert arrivals[-1][1] == b"data: [DONE]"
    assert len(arrivals) == 6
    # 0.2 s between the replica's events: a router that buffered would deliver them all at once
    assert arrivals[-2][0] - arrivals[0][0] > 0.5


async def test_a_stream_cut_by_a_dying_replica_is_cut_for_the_client_too_and_not_retried(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    dying = processes.fake_replica("dying", "--delay", "5.0", "--chunks", "5")
    router = processes.router([dying.address])
    await started(dying, routers=(router,))

    lines: list[bytes] = []

    async def read_stream() -> None:
        async with session.post(router.url + "/v1/completions", json={"prompt": "def ", "stream": True}) as response:
            assert response.headers["x-strata-attempts"] == "1"
            async for line in response.content:
                if line.strip():
                    lines.append(line.strip())
                    dying.kill()  # after the first event: the rest of the stream never comes

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_stream()
    assert len(lines) == 1  # the first event, then a broken transfer: never a clean end without [DONE]
    samples = await metrics(router)
    assert total(samples, "strata_router_attempts_total", outcome="reset") == 1
    assert total(samples, "strata_router_retries_total") == 0


async def test_replicas_found_through_dns(processes: Processes, session: aiohttp.ClientSession) -> None:
    replica = processes.fake_replica("r")
    router = processes.router([], "--replicas-dns", replica.address, "--dns-interval-s", "0.2")
    await started(replica, routers=(router,))
    answer = await post(session, router.url + "/v1/generate", GENERATE)
    assert (answer.status, answer.replica) == (200, replica.address)


async def test_the_real_workload_server_behind_the_router(processes: Processes, session: aiohttp.ClientSession) -> None:
    server = processes.workload_server("serve", "--model", "debug", "--max-new-tokens", "8", "--threads", "1")
    router = processes.router([server.address])
    await wait_ready(server, timeout_s=90)
    await started(server, routers=(router,))

    generated = await post(session, router.url + "/v1/generate", {"prompt": "def ", "max_new_tokens": 4})
    assert (generated.status, generated.replica, generated.attempts) == (200, server.address, 1)
    assert orjson.loads(generated.body)["tokens"] == 4
    scored = await post(session, router.url + "/v1/predict", {"text": "import os\n"})
    assert scored.status == 200
    assert orjson.loads(scored.body)["perplexity"] > 1
    refused = await post(session, router.url + "/v1/generate", {"prompt": "", "max_new_tokens": 4})
    assert refused.status == 400
    assert b"'prompt' must be a non-empty string" in refused.body
    async with session.get(router.url + "/v1/models") as response:
        model = orjson.loads(await response.read())["data"][0]["id"]
    completion = {"model": model, "prompt": "def ", "max_tokens": 4, "stream": True}
    async with session.post(router.url + "/v1/completions", json=completion) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = [line.strip() async for line in response.content if line.strip()]
    assert events[-1] == b"data: [DONE]"
    assert len(events) >= 2
    await asyncio.sleep(1.2)  # two probes of its /metrics
    samples = await metrics(router)
    assert total(samples, "strata_router_requests_total", code="200") == 4
    assert total(samples, "strata_router_replicas", state="routable") == 1


async def test_a_router_told_to_stop_answers_new_connections_through_its_shutdown_delay_then_drains(
    processes: Processes,
) -> None:
    """After SIGTERM, a Service's proxies keep sending a router new connections until its endpoint's removal reaches
    them: it answers them for its shutdown delay (saying draining on /readyz), then closes its port, and a request
    still in flight then finishes."""
    replica = processes.fake_replica("r0", "--delay", "0.8")
    router = processes.router([replica.address], "--shutdown-delay-s", "2")
    await started(replica, routers=(router,))

    router.terminate()
    signalled = time.monotonic()

    async def fresh_post() -> Answer:
        # a connection of its own for each request, as a proxy that picked this router's endpoint opens
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            return await post(fresh, router.url + "/v1/generate", GENERATE, timeout_s=10)

    async with aiohttp.ClientSession() as fresh, fresh.get(router.url + "/readyz") as response:
        assert (response.status, await response.json()) == (503, {"status": "draining"})
    answered = [await fresh_post()]  # 0.8 s each: within the first half of the delay
    await asyncio.sleep(max(0.0, 1.7 - (time.monotonic() - signalled)))
    answered.append(await fresh_post())  # sent 1.7 s in, answered 0.8 s later: after the port closed at 2 s
    assert [a.status for a in answered] == [200, 200], [a.body for a in answered]
    assert await asyncio.to_thread(router.popen.wait, 30) == 0, router.log_tail()
    assert time.monotonic() - signalled >= 2.0
    with pytest.raises(aiohttp.ClientConnectionError):  # gone: the port refuses
        await fresh_post()


async def test_a_request_that_finds_no_replica_ready_is_held_until_one_is(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    """With ``--hold-s`` (a service scaled to zero) a request waits for the first replica rather than taking the 503;
    one that waits past the hold gets the 503 with its reason."""
    port = free_port()  # where the replica will listen once it has started
    router = processes.router([f"127.0.0.1:{port}"], "--hold-s", "20")
    short = processes.router([f"127.0.0.1:{port}"], "--hold-s", "1", name="short")
    await wait_ready(router)
    await wait_ready(short)

    sent = time.monotonic()
    asking = asyncio.create_task(post(session, router.url + "/v1/generate", GENERATE))
    refused = await post(session, short.url + "/v1/generate", GENERATE)
    assert refused.status == 503
    assert refusal("/v1/generate", 503, orjson.loads(refused.body))[1] == "no replica ready yet"
    assert refused.seconds >= 1.0
    assert not asking.done()
    assert total(await metrics(router), "strata_router_held") == 1

    replica = processes.fake_replica("first", port=port)
    answer = await asking
    assert (answer.status, answer.replica) == (200, replica.address)
    assert time.monotonic() - sent >= 1.0
    assert total(await metrics(router), "strata_router_held") == 0
