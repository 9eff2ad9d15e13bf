"""The whole case suite against each backend named by ``--conformance-backends``, op by op.

This is the conformance run as a test: it passes when every case of the op passes (or the
device declares the op unsupported), and at least one case of every op ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import mlplug
from mlplug.ops import OPS
from mlplug_conformance.cases import all_cases
from mlplug_conformance.execute import RAN, Session


@pytest.fixture(scope="module")
def sessions() -> Iterator[dict[str, Session]]:
    made: dict[str, Session] = {}
    yield made
    for s in made.values():
        s.close()


def _session(sessions: dict[str, Session], name: str) -> Session:
    if name not in sessions:
        info = {b.name: b for b in mlplug.list_backends()}.get(name)
        if info is None:
            pytest.skip(f"backend {name!r} is not installed")
        if not info.available:
            pytest.skip(f"backend {name!r} is unavailable here: {info.reason}")
        sessions[name] = Session(name)
    return sessions[name]


@pytest.mark.parametrize("op", list(OPS))
def test_op_conforms(backend_name: str, op: str, sessions: dict[str, Session]) -> None:
    session = _session(sessions, backend_name)
    results = session.run([c for c in all_cases() if c.op == op])
    failures = [f"{r.id}: {r.message}" for r in results if r.status == "FAIL"]
    assert not failures, "\n".join(failures[:10])
    ran = [r for r in results if r.status in RAN]
    assert ran or all(r.status == "unsupported" for r in results), f"no case of {op} ran"
