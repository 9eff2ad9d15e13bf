"""The ``reference`` backend: graphs run with no device plugin, through the core engine."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

import mlplug


def test_graphs_run_on_the_reference_backend() -> None:
    with mlplug.new_backend(None, mlplug.BackendParams(), backend="reference") as backend:
        ctx = backend.new_context()
        a = ctx.input().from_float_slice(range(12), 6, 2)
        b = ctx.input().from_float_slice([100, 200, 300], 3)
        c = a.add(ctx, b)
        ctx.forward(c).compute(c)
        assert c.floats().tolist() == [100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311]
        info = {i.name: i for i in mlplug.list_backends()}["reference"]
        assert info.priority == -100 and info.available


def test_copy_into_a_strided_quantised_window() -> None:
    with mlplug.new_backend(None, mlplug.BackendParams(), backend="reference") as backend:
        ctx = backend.new_context()
        cache = ctx.layer(0).zeros(mlplug.DType.Q8_0, 32, 4)
        src = ctx.layer(0).from_float_slice(np.linspace(-1, 1, 64), 32, 2)
        window = cache.view(ctx, 34, 32, 68, 2)  # rows 1 and 3
        out = src.copy(ctx, window)
        ctx.forward(out).compute(out)
        rows = cache.floats().reshape(4, 32)
        assert np.abs(rows[[1, 3]] - np.linspace(-1, 1, 64).reshape(2, 32)).max() < 1 / 127
        assert not rows[[0, 2]].any()


def test_topk_result_is_a_window() -> None:
    with mlplug.new_backend(None, mlplug.BackendParams(), backend="reference") as backend:
        ctx = backend.new_context()
        x = ctx.layer(0).from_float_slice([0.1, 0.9, 0.5, 0.3, 4, 3, 2, 1], 4, 2)
        y = x.topk(ctx, 2)
        ctx.forward(y).compute(y)
        assert y.numpy().tolist() == [[1, 2], [0, 1]]


def test_the_plugin_module_imports_no_numpy() -> None:
    code = "import sys, mlplug_conformance.plugin; sys.exit(1 if 'numpy' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
