"""HTTPS and mutual TLS: what kube-scheduler's extender ``tlsConfig`` (caFile, certFile, keyFile) can present.

kube-scheduler cannot send a bearer token or any other header to an extender; a client certificate is the one
credential its config carries, so with ``tls_client_ca_file`` set only clients holding one from that CA get the
verbs (probes and /metrics stay open to clients without one, as kubelet presents none). Certificates come from
the same openssl-made PKI the local control plane uses.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from scheduler_builders import a_node, a_pod, an_extender
from test_http import LiveServer
from test_server import post, read_response

from strata_dev.pki import PKI, make_pki
from strata_scheduler.server import tls_context
from strata_scheduler.settings import Settings

pytestmark = pytest.mark.unit

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


@pytest.fixture(scope="module")
def server(pki: PKI) -> Iterator[LiveServer]:
    settings = Settings(tls_cert_file=pki.serving_cert, tls_key_file=pki.serving_key, tls_client_ca_file=pki.ca_cert)
    live = LiveServer(an_extender(a_node("h100").h100().spot()), settings)
    yield live
    live.close()


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def status_of(server: LiveServer, context: ssl.SSLContext, request: bytes = HEALTHZ) -> int:
    with (
        socket.create_connection(("127.0.0.1", server.server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(request)
        return read_response(sock, bytearray())[0]


FILTER = post("/filter", orjson.dumps({"Pod": a_pod().gpus(8).build(), "NodeNames": ["h100"]}))


def test_a_client_with_a_certificate_from_the_ca_is_served(server: LiveServer, pki: PKI) -> None:
    context = client_context(pki.ca_cert, pki.kubelet_client_cert, pki.kubelet_client_key)
    assert status_of(server, context, FILTER) == 200
    assert status_of(server, context) == 200


def test_a_client_without_a_certificate_gets_the_probes_but_not_the_verbs(server: LiveServer, pki: PKI) -> None:
    """kubelet's HTTPS probes and most scrapers present no certificate: they still get /healthz and /metrics."""
    context = client_context(pki.ca_cert)
    assert status_of(server, context) == 200
    for verb in ("/filter", "/prioritize", "/quote"):
        assert status_of(server, context, post(verb, b"{}")) == 403


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    server: LiveServer, pki: PKI, other_pki: PKI
) -> None:
    context = client_context(pki.ca_cert, other_pki.kubelet_client_cert, other_pki.kubelet_client_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        status_of(server, context)


def test_plain_http_to_the_tls_port_gets_no_answer(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=10) as sock:
        sock.sendall(HEALTHZ)
        assert not sock.recv(1 << 16).startswith(b"HTTP/1.1 200")


def test_a_key_or_client_ca_without_a_certificate_is_a_clear_error(pki: PKI) -> None:
    with pytest.raises(ValueError, match="need tls_cert_file"):
        tls_context(Settings(tls_client_ca_file=pki.ca_cert))
