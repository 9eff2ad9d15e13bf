"""The light descriptor, the entry point's import cost and op coverage."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from mlplug.device import OPS, BackendParams, Buffer, Device, DType, Node, TensorRef
from mlplug_cpu import plugin
from mlplug_cpu.device import CpuDevice
from mlplug_cpu.kernels import KERNELS


def test_importing_the_descriptor_imports_no_numpy() -> None:
    code = (
        "import sys, mlplug_cpu, mlplug_cpu.plugin\n"
        "assert 'numpy' not in sys.modules, 'numpy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_descriptor_fields() -> None:
    p = plugin.PLUGIN
    assert (p.name, p.priority, p.install_hint) == ("cpu", 0, 'pip install "mlplug[cpu]"')
    assert p.probe is not None and p.probe() == (True, "")
    devices = p.load(BackendParams())
    assert [d.kind for d in devices][:1] == ["cpu"]
    assert isinstance(devices[0], Device)


def test_hook_registers_the_cpu_backend() -> None:
    calls: list[Any] = []

    class Registry:
        def register_engine_plugin(self, p: Any) -> None:
            calls.append(p)

    plugin.mlplug_register_backends(Registry())  # type: ignore[arg-type]
    [p] = calls
    assert p is plugin.PLUGIN and p.name == "cpu"
    assert p.priority == 0 and p.install_hint == 'pip install "mlplug[cpu]"'


def test_every_op_has_a_kernel_and_is_supported() -> None:
    assert set(KERNELS) == set(OPS)
    dev = CpuDevice()
    ref = TensorRef(None, 0, (1, 1, 1, 1), (4, 4, 4, 4), DType.F32)
    for name in OPS:
        assert dev.unsupported(Node(name, ref, (ref,))) is None


def test_unknown_op_is_refused() -> None:
    dev = CpuDevice()
    ref = TensorRef(None, 0, (1, 1, 1, 1), (4, 4, 4, 4), DType.F32)
    reason = dev.unsupported(Node("frobnicate", ref, ()))
    assert reason is not None and "frobnicate" in reason
    with pytest.raises(NotImplementedError, match="frobnicate"):
        dev.execute([Node("frobnicate", ref, ())])


def test_buffers_satisfy_the_protocol() -> None:
    dev = CpuDevice()
    buf = dev.alloc(64)
    assert isinstance(buf, Buffer)
    assert buf.data.ctypes.data % dev.alignment == 0
