"""The real node's two local images, made without a registry or a builder: a docker-archive tar holding
``strata.local/pause:1`` (the sandbox image) and ``strata.local/busybox:1`` (for tests), both one layer with
Debian's static busybox and its applet links.

containerd imports the tar (``ctr -n k8s.io images import``); pods use them with ``imagePullPolicy: Never``.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

from strata_dev.node_config import PAUSE_IMAGE
from strata_dev.processes import ClusterError

TEST_IMAGE = "strata.local/busybox:1"
"""A static busybox (``sh``, ``echo``, ``nslookup``, ``wget``, ``sleep``...): what the real node's tests run."""
BUSYBOX = Path("/bin/busybox")
"""Debian's busybox-static (``make node-deps``); a dynamically linked busybox would lack its libraries."""
APPLETS = ("sh", "echo", "cat", "ls", "mkdir", "sleep", "nslookup", "wget", "nc", "httpd", "hostname", "env", "true")


def _layer(busybox: Path) -> bytes:
    """One uncompressed layer: /bin/busybox, applet links, /etc/passwd and an empty /tmp (mtimes fixed)."""
    data = busybox.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, payload: bytes = b"", target: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.size, info.linkname = kind, mode, 0, len(payload), target
            tar.addfile(info, io.BytesIO(payload) if payload else None)

        for folder in ("bin", "etc", "tmp"):
            add(folder, tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755)
        add("bin/busybox", tarfile.REGTYPE, 0o755, data)
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, 0o777, target="busybox")
        add("etc/passwd", tarfile.REGTYPE, 0o644, b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    return buffer.getvalue()


def _config(diff_id: str, run: dict[str, list[str]]) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {**run, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "strata_dev.node_images: static busybox"}],
        },
        sort_keys=True,
    ).encode()


IMPORT_BASE_S = 120.0
IMPORT_MIN_BYTES_PER_S = 10 * 2**20
"""An import may take :data:`IMPORT_BASE_S` plus the archive's size at this rate: ctr imported the 5.8 GiB
workloads image in 81 s on an idle two-core machine, and needed over 120 s while an image build ran beside it."""
NODE_IMAGES = {PAUSE_IMAGE: {"Entrypoint": ["/bin/sleep", "2147483647"]}, TEST_IMAGE: {"Cmd": ["/bin/sh"]}}
"""pause: an entrypoint that sleeps; busybox: only a command, so a pod's args (``kubectl run -- echo hi``) run."""


def write_archive(path: Path, busybox: Path = BUSYBOX, images: dict[str, dict[str, list[str]]] | None = None) -> Path:
    """Write a docker-archive tar to ``path``: each of ``images`` (tag: entrypoint/command, default
    :data:`NODE_IMAGES`) is the one busybox layer with that configuration."""
    if not busybox.is_file():
        raise ClusterError(
            f"{busybox} is missing: run `make node-deps` (Debian's busybox-static) for the node's images"
        )
    layer = _layer(busybox)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    manifest = []
    files: dict[str, bytes] = {"layer.tar": layer}
    for tag, run in (images or NODE_IMAGES).items():
        config = _config(diff_id, run)
        name = hashlib.sha256(config).hexdigest() + ".json"
        files[name] = config
        manifest.append({"Config": name, "RepoTags": [tag], "Layers": ["layer.tar"]})
    files["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(payload), 0o644
            tar.addfile(info, io.BytesIO(payload))
    return path


def import_timeout_s(archive_bytes: int) -> float:
    """How long an import of an archive this large may take: containerd unpacks every layer onto disk as it
    imports, so the 5.8 GiB workloads image needs minutes on a busy two-core machine, the test images seconds."""
    return IMPORT_BASE_S + archive_bytes / IMPORT_MIN_BYTES_PER_S


def import_images(archive: Path, containerd_socket: Path, log: Path) -> None:
    """Import the archive into containerd's ``k8s.io`` namespace (the one CRI reads)."""
    timeout_s = import_timeout_s(archive.stat().st_size)
    with log.open("ab") as out:
        try:
            proc = subprocess.run(
                ["ctr", "--address", str(containerd_socket), "-n", "k8s.io", "images", "import", str(archive)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(
                f"importing {archive} into the node's containerd took over {timeout_s:.0f}s; log: {log}"
            ) from None
    if proc.returncode != 0:
        tail = "\n    ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise ClusterError(f"importing the node's images into containerd failed; log: {log}\n    {tail}")
