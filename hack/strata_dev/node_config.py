"""The real node's configuration files, as text: KubeletConfiguration, kube-proxy's configuration, containerd's
``config.toml``, the CNI conflist and CoreDNS's Corefile.

Pure functions of a :class:`NodeLayout` (where the node's files go, its addresses and names), so a unit test can
read exactly what the launcher writes. Comments mark each setting that exists only because of the kind of host
the local cluster runs on (a cgroup v1 machine with a unified mount, no CAP_SYS_RESOURCE, no registry).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

REAL_NODE_LABEL = "strata.dev/real-node"
"""Carried (``true``) by the real node: CPU work that must run in a container selects it; kwok nodes lack it."""
NODE_NAME = "strata-node"
POD_SUBNET = "10.245.0.0/24"
"""The real node's pod addresses: on its CNI bridge inside the node's network namespace, nowhere else."""
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "strata.local/pause:1"
"""The sandbox image, made locally (:mod:`strata_dev.node_images`): nothing is pulled."""
CNI_PLUGIN_DIR = Path("/usr/lib/cni")
"""Where Debian's containernetworking-plugins puts bridge, host-local, loopback and portmap."""


@dataclass(frozen=True)
class NodeLayout:
    """Where one real node keeps its files, and its addresses.

    ``host_ip`` and ``node_ip`` are the two ends of the veth pair the launcher creates: ``host_ip`` in the host's
    network namespace (where the API server is reached), ``node_ip`` inside the node's namespace.
    """

    root: Path
    host_ip: str
    node_ip: str
    prefix: int
    apiserver_port: int
    cgroup_root: str
    """The node's own cgroup (e.g. ``/strata-node-1a2b``), so kubelet's ``kubepods`` never meets another's."""
    run_dir: Path
    """containerd's sockets and runc's state: a short path (a unix socket's path is at most 104 bytes)."""

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs_dir(self) -> Path:
        return self.root / "pod-logs"

    @property
    def server(self) -> str:
        return f"https://{self.host_ip}:{self.apiserver_port}"


def kubelet_config(layout: NodeLayout, client_ca: Path) -> str:
    """KubeletConfiguration (JSON is YAML) for a node that runs pods through containerd with cgroupfs."""
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "_comments": [
            "failCgroupV1=false: this host is cgroup v1 with a unified mount; kubelet 1.35+ refuses v1 otherwise",
            "cgroupDriver=cgroupfs: there is no systemd to delegate cgroups to",
            "failSwapOn=false: the host may have swap and this is a throw-away node",
            "cgroupRoot: the node's own cgroup, removed at stop, so two local nodes never share kubepods",
            "evictionHard memory only: the disk is the host's, shared with other work; no disk-pressure evictions",
            "podLogsDir: the node's own; in the host's /var/log/pods another local node's kubelet removes the log"
            " folders of pods it does not know (its log garbage collection), and containers' logs lose lines",
        ],
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "cgroupRoot": layout.cgroup_root,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "address": layout.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [layout.node_ip],
        "resolvConf": str(layout.root / "resolv.conf"),
        "podLogsDir": str(layout.pod_logs_dir),
        "nodeStatusReportFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "serializeImagePulls": False,
        "maxPods": 110,
        "podPidsLimit": 4096,
        "imageGCHighThresholdPercent": 100,
        "evictionHard": {"memory.available": "100Mi"},
        "protectKernelDefaults": False,
        "registerNode": True,
        "shutdownGracePeriod": "0s",
    }
    comments = config.pop("_comments")
    assert isinstance(comments, list)
    header = "".join(f"# {line}\n" for line in comments)
    return header + json.dumps(config, indent=1) + "\n"


def kube_proxy_config(layout: NodeLayout) -> str:
    """KubeProxyConfiguration: iptables mode inside the node's namespace; host-wide conntrack sysctls untouched."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(layout.kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "bindAddress": layout.node_ip,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {  # 0: leave nf_conntrack_max and the timeouts as the host has them (they are host-wide)
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }
    return "# conntrack all 0: those sysctls are shared with the host; the node must leave them as found\n" + (
        json.dumps(config, indent=1) + "\n"
    )


def containerd_config(layout: NodeLayout) -> str:
    """containerd 1.6 ``config.toml``: every path inside the node's folder, CRI with the local pause image."""
    c = layout.root / "containerd"
    return f"""\
version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{layout.containerd_socket}"

[ttrpc]
  address = "{layout.run_dir / "containerd.ttrpc.sock"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: the sandbox image is made and imported locally.
  sandbox_image = "{PAUSE_IMAGE}"
  # This host lacks CAP_SYS_RESOURCE: without this runc fails every sandbox with
  # "can't get final child's PID from pipe: EOF" (it may only raise oom_score_adj).
  restrict_oom_score_adj = true
  # Pod network namespaces under the node's state folder, not the host's /run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # No systemd on this host: cgroupfs, as kubelet's cgroupDriver.
        SystemdCgroup = false
        Root = "{layout.run_dir / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_PLUGIN_DIR}"
    conf_dir = "{layout.cni_conf_dir}"
"""


def cni_conflist(layout: NodeLayout) -> str:
    """bridge + host-local (IPAM state in the node's folder) + portmap; loopback is CRI's own."""
    subnet = ipaddress.ip_network(POD_SUBNET)
    config = {
        "cniVersion": "0.4.0",
        "name": "strata-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "strata0",
                "isGateway": True,
                "ipMasq": True,  # pods reach the API server's veth end; masqueraded inside the node's namespace
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(subnet), "gateway": str(next(subnet.hosts()))}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(layout.root / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(config, indent=1) + "\n"


def corefile(layout: NodeLayout) -> str:
    """CoreDNS serving the cluster domain from the API on the node IP (no upstream: nothing off the machine)."""
    return f"""\
.:53 {{
    bind {layout.node_ip}
    errors
    ready 127.0.0.1:8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {layout.kubeconfig} strata-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 10
}}
"""
