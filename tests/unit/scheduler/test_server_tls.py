"""HTTPS and mutual TLS: what kube-scheduler's extender ``tlsConfig`` (caFile, certFile, keyFile) can present.

kube-scheduler cannot send a bearer token or any other header to an extender; a client certificate is the one
credential its config carries, so with ``tls_client_ca_file`` set only clients holding one from that CA are
served. Certificates come from the same openssl-made PKI the local control plane uses.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from scheduler_builders import a_node, an_extender
from test_http import LiveServer
from test_server import read_response

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


def healthz(server: LiveServer, context: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", server.server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(HEALTHZ)
        return read_response(sock, bytearray())[0]


def test_a_client_with_a_certificate_from_the_ca_is_served(server: LiveServer, pki: PKI) -> None:
    context = client_context(pki.ca_cert, pki.kubelet_client_cert, pki.kubelet_client_key)
    assert healthz(server, context) == 200


@pytest.mark.parametrize("credential", ["none", "another CA's"])
def test_a_client_without_a_certificate_from_the_ca_is_refused(
    server: LiveServer, pki: PKI, other_pki: PKI, credential: str
) -> None:
    if credential == "none":
        context = client_context(pki.ca_cert)
    else:
        context = client_context(pki.ca_cert, other_pki.kubelet_client_cert, other_pki.kubelet_client_key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        healthz(server, context)


def test_plain_http_to_the_tls_port_gets_no_answer(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=10) as sock:
        sock.sendall(HEALTHZ)
        assert not sock.recv(1 << 16).startswith(b"HTTP/1.1 200")


def test_a_key_or_client_ca_without_a_certificate_is_a_clear_error(pki: PKI) -> None:
    with pytest.raises(ValueError, match="need tls_cert_file"):
        tls_context(Settings(tls_client_ca_file=pki.ca_cert))
