"""Where the run listens: loopback only on a local Ray, and rendezvous for the process groups.

A Ray started here runs in Ray's single-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the mode Ray uses on macOS
and Windows): the node address is 127.0.0.1, so the GCS, raylet, agents and every worker's gRPC server bind loopback.
The process groups (learner ranks; weight sync between learner rank 0 and the engines) then meet through a file store
on the node instead of a TCP store, which would listen on every interface, and gloo, NCCL and vLLM are pointed at the
loopback interface. On a cluster the groups meet over TCP on rank 0's node address (see the README for the ports).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import tempfile

import psutil
import ray

SINGLE_NODE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_interface() -> str:
    """The name of the network interface holding 127.0.0.1 (``lo`` on Linux, ``lo0`` on macOS)."""
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addrs):
            return name
    return "lo"


def loopback_env() -> dict[str, str]:
    """Environment for every process of a local run: Ray's single-node mode, gloo / NCCL / vLLM on loopback."""
    lo = loopback_interface()
    return {SINGLE_NODE_VAR: "0", "GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo, "VLLM_HOST_IP": "127.0.0.1"}


def use_loopback_only() -> dict[str, str]:
    """Make the Ray about to start here bind loopback only; returns the environment its workers need too.

    Ray reads the single-node switch when it is imported, which the driver has done before any config was known, so
    the imported constant is set as well as the environment that Ray's own processes inherit."""
    from ray._private import ray_constants

    env = loopback_env()
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    return env


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@ray.remote(num_cpus=0)
def rendezvous() -> str:
    """A fresh meeting point on the node that runs it (scheduled into rank 0's bundle): ``file://`` a new store file
    when the node's address is loopback (a local run), else ``tcp://`` its address and a free port."""
    host = ray.util.get_node_ip_address()
    if is_loopback(host):
        return "file://" + os.path.join(tempfile.mkdtemp(prefix="stepentropy_rdzv_"), "store")
    with socket.socket() as s:
        s.bind(("", 0))
        return f"tcp://{host}:{s.getsockname()[1]}"

