"""The private cluster talks over 127.0.0.1 only: every socket of every process it runs
(the test process as driver, the GCS, the raylet, the agents, the node actors' workers) is
bound to a loopback address, and every connected socket's peer is loopback too."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import pytest

pytest.importorskip(
    "mlplug_ray", reason="mlplug-ray is not installed (pip install -e ./plugins/ray)"
)
pytest.importorskip("ray", reason='ray is not installed (pip install "mlplug[ray]")')

from mlplug.device import BackendParams
from mlplug_ray.device import RayDevice, load

psutil = pytest.importorskip("psutil", reason='psutil is not installed (pip install "mlplug[ray]")')


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _outside(connections: list[tuple[str, Any]]) -> list[str]:
    """Describe every socket bound to, or connected to, a non-loopback address."""
    bad = []
    for who, c in connections:
        if c.laddr and not _loopback(c.laddr.ip):
            bad.append(f"{who} {c.status} on {c.laddr.ip}:{c.laddr.port}")
        if c.raddr and not _loopback(c.raddr.ip):
            bad.append(f"{who} connected to {c.raddr.ip}:{c.raddr.port}")
    return bad


def test_classifier_flags_wildcard_and_external_addresses() -> None:
    assert all(_loopback(a) for a in ("127.0.0.1", "127.5.0.1", "::1", "::ffff:127.0.0.1"))
    assert not any(_loopback(a) for a in ("0.0.0.0", "::", "192.0.2.2", "::ffff:192.0.2.2"))


def test_every_cluster_socket_is_on_loopback(two_nodes: Any) -> None:
    ray = two_nodes
    devices = load(BackendParams())
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        # traffic first: a node-to-node copy past Ray's inline limit (through the object store)
        src, dst = devices[1], devices[2]
        assert isinstance(src, RayDevice) and isinstance(dst, RayDevice)
        n = 1 << 20
        a, b = src.alloc(n), dst.alloc(n)
        a.write(0, bytes(range(256)) * (n // 256))
        src.synchronize()
        assert dst.copy_from(a, 0, b, 0, n)
        assert b.read(n - 256, 256) == bytes(range(256))
        me = psutil.Process(os.getpid())
        processes = [me, *me.children(recursive=True)]
        names = {p.pid: p.name() for p in processes}
        # the node actors' worker processes are among them
        pids = {getattr(d, "pid", 0) for d in devices[1:]}
        assert pids <= set(names), (pids, names)
        assert any("raylet" in n for n in names.values())
        assert any("gcs_server" in n for n in names.values())
        connections: list[tuple[str, Any]] = []
        for p in processes:
            try:
                found = p.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            connections += [(f"{names[p.pid]}[{p.pid}]", c) for c in found]
        listening = [c for _, c in connections if c.status == psutil.CONN_LISTEN]
        assert len(listening) >= 4, connections  # GCS, raylet, driver and the workers
        assert _outside(connections) == []
    finally:
        for device in devices:
            device.close()
