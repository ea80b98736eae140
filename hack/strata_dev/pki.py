"""Certificates and keys for the local control plane, made with the openssl command line.

One throw-away CA signs the API server's serving certificate (for 127.0.0.1 and localhost) and the
controller manager's cluster signer; a separate RSA key signs service-account tokens. Clients verify TLS
against the CA, as they would on a real cluster.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class PKIError(RuntimeError):
    pass


@dataclass(frozen=True)
class PKI:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path
    kubelet_client_cert: Path
    """The API server's client certificate towards kubelets (``kubectl logs``/``exec`` on the real node)."""
    kubelet_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PKIError("openssl not found on PATH: install it (Debian: apt-get install openssl)")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PKIError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> PKI:
    """The CA, the API server's serving certificate (for loopback and ``extra_ips``, e.g. the real node's veth
    end), its kubelet client certificate and the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30", "-subj", "/CN=strata-local-ca",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver",
             cwd=directory)  # fmt: skip
    names = ["IP:127.0.0.1", *(f"IP:{ip}" for ip in extra_ips), "DNS:localhost", "DNS:kubernetes",
             "DNS:kubernetes.default", "DNS:kubernetes.default.svc"]  # fmt: skip
    (directory / "apiserver.ext").write_text(
        f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
    )
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "30", "-extfile", "apiserver.ext", cwd=directory)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr",
             "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client", cwd=directory)  # fmt: skip
    (directory / "kubelet-client.ext").write_text("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n")
    _openssl("x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "kubelet-client.crt", "-days", "30", "-extfile", "kubelet-client.ext", cwd=directory)  # fmt: skip
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=directory)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=directory)
    return PKI(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
        kubelet_client_cert=directory / "kubelet-client.crt",
        kubelet_client_key=directory / "kubelet-client.key",
    )
