"""Loopback helpers for a local run (driver.network); the whole run's sockets are checked in tests/e2e."""
import psutil

from stepentropy_rl.driver.network import SINGLE_NODE_VAR, is_loopback, loopback_env, loopback_interface


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
    assert not is_loopback("node-3")


def test_loopback_env_points_every_library_at_the_loopback_interface():
    lo = loopback_interface()
    assert any(a.address == "127.0.0.1" for a in psutil.net_if_addrs()[lo])
    env = loopback_env()
    assert env[SINGLE_NODE_VAR] == "0" and env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == lo
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
