"""The example's own kernel tests, on the conformance suite's harness (no engine).

``mlplug_conformance.harness.Harness`` builds operands on the device with ``alloc`` and
``Buffer.write``, runs one node and reads the result back with ``Buffer.read``, converting values
with the suite's independent code. A renamed copy of this plugin keeps these tests and points
the ``device`` fixture at its own device. The whole-suite run is ``mlplug conformance --backend
example``; these tests pin down the details a plugin author gets wrong first.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from mlplug.device import DeviceOutOfMemory, DType
from mlplug_conformance.harness import Harness

from mlplug_example.device import ExampleDevice


@pytest.fixture
def device() -> Iterator[ExampleDevice]:
    dev = ExampleDevice()
    yield dev
    dev.close()


@pytest.fixture
def h(device: ExampleDevice) -> Harness:
    return Harness(device)


def test_add_tiles_b_over_a(h: Harness) -> None:
    # SEMANTICS §5.2: a [3] against a [6] repeats the three values (numpy would refuse).
    out = h.run("add", h.tensor(np.arange(12), 6, 2), h.tensor([100, 200, 300], 3))
    assert h.values(out).tolist() == [100, 201, 302, 103, 204, 305, 106, 207, 308, 109, 210, 311]


def test_kernels_read_operands_through_their_strides(h: Harness) -> None:
    base = np.arange(15, dtype=np.float32)  # ggml [5, 3]
    a = h.permuted(h.tensor(base, 5, 3), 1, 0, 2, 3)  # ggml [3, 5]: a transposed view
    out = h.run("neg", a)
    assert h.array(out)[0, 0].tolist() == (-base.reshape(3, 5).T).tolist()


def test_topk_writes_only_its_k_columns(h: Harness) -> None:
    out = h.run("topk", h.tensor([3, 1, 4, 1, 5, 9, 2, 6], 8), k=3)
    assert out.ne == (3, 1, 1, 1) and out.nb[1] == 8 * 4  # a row of the full argsort
    assert h.values(out).tolist() == [5, 7, 4]


def test_copy_converts_into_a_strided_window_and_touches_nothing_else(h: Harness) -> None:
    dst = h.tensor(np.full(8, 7.0), 8, dtype=DType.F16)
    window = h.view(dst, 2, (3,), (4,))  # elements 1, 3, 5 of dst
    h.run("copy", h.tensor([0.5, 1.5, 2.5], 3), window)
    assert h.values(dst).tolist() == [7, 0.5, 7, 1.5, 7, 2.5, 7, 7]


def test_rows_with_an_out_of_range_id_raises(h: Harness) -> None:
    table, ids = h.tensor(np.arange(8), 2, 4), h.tensor([1, 4], 2, dtype=DType.I32)
    with pytest.raises(IndexError, match="id 4 is out of range"):
        h.run("rows", table, ids)


def test_the_memory_cap_refuses_and_frees_give_back() -> None:
    dev = ExampleDevice(memory_limit=1000)
    first = dev.alloc(600)
    with pytest.raises(DeviceOutOfMemory):
        dev.alloc(600)
    first.free()
    assert dev.alloc(600).nbytes == 600 and dev.free_memory() == 400
    dev.close()
    assert dev.allocated == 0
