"""Multi-host launching: waiting for the hosts' names, the interface gloo and NCCL use.

The real two-host run (two containers of the training image) is ``tests/test_docker_multihost.py``.
"""

from __future__ import annotations

import pytest

from training.config import ConfigError
from training.distributed import LaunchPlan, socket_interface_env, wait_for_hosts


def plan(nnodes: int = 2, interface: str | None = "lo") -> LaunchPlan:
    return LaunchPlan(nnodes, 1, 0, "algo-1", 29500, ("algo-1", "algo-2"), interface)


def test_hosts_are_waited_for_until_they_resolve() -> None:
    answers = {"algo-1": ["10.0.0.1"], "algo-2": [None, None, "10.0.0.2"]}

    def resolve(host: str) -> str:
        value = answers[host].pop(0) if len(answers[host]) > 1 else answers[host][0]
        if value is None:
            raise OSError("Name or service not known")
        return value

    lines: list[str] = []
    sleeps: list[float] = []
    assert wait_for_hosts(["algo-1", "algo-2"], lines.append, resolve=resolve, sleep=sleeps.append) == {
        "algo-1": "10.0.0.1",
        "algo-2": "10.0.0.2",
    }
    assert len(sleeps) == 2 and lines == ["hosts_resolved: algo-1=10.0.0.1 algo-2=10.0.0.2"]


def test_a_host_that_never_resolves_is_a_clear_error() -> None:
    def never(host: str) -> str:
        raise OSError("Name or service not known")

    with pytest.raises(ConfigError, match="algo-2 of resourceconfig.json did not resolve"):
        wait_for_hosts(["algo-2"], lambda _: None, timeout_s=0, resolve=never, sleep=lambda _: None)


def test_gloo_and_nccl_use_resourceconfigs_interface_on_several_hosts() -> None:
    lines: list[str] = []
    assert socket_interface_env(plan(), {}, lines.append) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    assert socket_interface_env(plan(), {"GLOO_SOCKET_IFNAME": "eth1"}, lines.append) == {"NCCL_SOCKET_IFNAME": "lo"}
    assert socket_interface_env(plan(nnodes=1), {}, lines.append) == {}  # one host: loopback is fine
    assert socket_interface_env(plan(interface=None), {}, lines.append) == {}
    assert socket_interface_env(plan(interface="nosuch0"), {}, lines.append) == {}
    assert lines[-1].startswith("network_interface_missing: nosuch0 present: ") and "lo" in lines[-1]
