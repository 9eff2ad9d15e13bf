"""The "other route" is real: a backend with its own executor passes the conformance cases.

``own_executor.EagerBackend`` implements ``mlplug.Backend`` and ``mlplug.executor.GraphExecutor``
directly (core's contexts and tensors, no core engine). Registered as a backend, it is run through
the suite's cases exactly as a device plugin is; cases that need a model file are left out (it
holds none).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from own_executor import EagerBackend

import mlplug
from mlplug.executor import GraphExecutor
from mlplug_conformance.cases import all_cases
from mlplug_conformance.device import ReferenceDevice
from mlplug_conformance.execute import RAN, Session


@pytest.fixture(scope="module")
def eager() -> Iterator[str]:
    mlplug.register_backend(
        "eager", lambda path, params: EagerBackend(path, params, ReferenceDevice()), priority=-1000
    )
    yield "eager"
    mlplug.unregister_backend("eager")


def test_it_is_a_backend_and_an_executor(eager: str) -> None:
    with mlplug.new_backend(None, mlplug.BackendParams(), backend=eager) as backend:
        assert isinstance(backend, mlplug.Backend) and isinstance(backend, GraphExecutor)
        ctx = backend.new_context()
        a = ctx.input().from_float_slice(range(6), 3, 2)
        y = a.add(ctx, ctx.input().from_float_slice([10, 20, 30], 3)).sum_rows(ctx)
        ctx.forward(y).compute(y)
        assert y.floats().tolist() == [63.0, 72.0]
        with pytest.raises(mlplug.NotComputedError):
            a.add(ctx, a).bytes()


def test_the_conformance_cases_pass_on_it(eager: str) -> None:
    cases = [c for c in all_cases() if not c.needs_file]
    session = Session(eager)
    try:
        results = session.run(cases)
    finally:
        session.close()
    statuses = Counter(r.status for r in results)
    failures = [f"{r.id}: {r.message}" for r in results if r.status == "FAIL"]
    assert not failures, "\n".join(failures[:10])
    assert sum(statuses[s] for s in RAN) > 0.9 * len(cases), statuses
    assert {r.op for r in results if r.status == "pass"} == {c.op for c in cases}
