"""``helm template`` and ``helm lint`` of charts/strata, and readers of what they render."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[3] / "charts" / "strata"
RELEASE = "rel"
NAMESPACE = "strata-system"
KUBE_VERSION = "1.36.3"

Objects = dict[tuple[str, str], dict[str, Any]]
"""Rendered objects by (kind, name); one outside the release's namespace (an operator Role in a namespace it
serves) by (kind, "namespace/name")."""


@dataclass(frozen=True)
class Chart:
    helm: Path

    def helm_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.helm), *args], capture_output=True, text=True, timeout=120)

    def template(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Render with these extra flags (``--set``...); helm checks the values against values.schema.json."""
        return self.helm_run("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", KUBE_VERSION, *args)

    def render(self, *args: str) -> Objects:
        proc = self.template(*args)
        assert proc.returncode == 0, proc.stderr
        docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        objects = {(doc["kind"], key(doc["metadata"])): doc for doc in docs}
        assert len(objects) == len(docs), "two rendered objects share a kind and a name"
        return objects


def key(metadata: dict[str, Any]) -> str:
    namespace = metadata.get("namespace", NAMESPACE)
    return str(metadata["name"]) if namespace == NAMESPACE else f"{namespace}/{metadata['name']}"


def container(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    """The first container of a workload's pod template."""
    found: dict[str, Any] = objects[(kind, name)]["spec"]["template"]["spec"]["containers"][0]
    return found


def named_port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)
