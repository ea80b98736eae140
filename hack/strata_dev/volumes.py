"""Volumes on a cluster without a provisioner (the local cluster has none; kind's has one): a PersistentVolume on a
node's folder, bound in advance to the claim that uses it. The demo keeps ``cpu-tiny``'s checkpoints on one, which
the example InferenceService then serves; the tests make theirs the same way.
"""

from __future__ import annotations

from typing import Any


def host_path_claim(namespace: str, claim: str, path: str, size: str = "1Gi") -> tuple[dict[str, Any], dict[str, Any]]:
    """A ReadWriteOnce PersistentVolume named ``<namespace>-<claim>`` on the node's directory ``path``, bound in
    advance to the claim ``claim`` in ``namespace`` (no provisioner, no StorageClass), and that claim: the two
    manifests, to create in that order."""
    volume = f"{namespace}-{claim}"
    capacity = {"storage": size}
    return (
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": capacity,
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": path, "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": capacity},
                "storageClassName": "",
                "volumeName": volume,
            },
        },
    )
