"""Options and fixtures of the conformance suite's own tests.

``--conformance-backends=reference,cpu`` (or ``MLPLUG_CONFORMANCE_BACKENDS``) names the backends
the whole case suite runs against in ``test_suite.py``; one that is not installed or not
available here is skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

import mlplug
from mlplug.device import EnginePlugin, Node
from mlplug.engine import EngineFactory
from mlplug_conformance import convert
from mlplug_conformance.device import ReferenceDevice, _read, _scatter


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--conformance-backends",
        default=os.environ.get("MLPLUG_CONFORMANCE_BACKENDS", "reference,cpu"),
        help="comma-separated backends the conformance cases run against",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        names = [
            n.strip()
            for n in metafunc.config.getoption("--conformance-backends").split(",")
            if n.strip()
        ]
        metafunc.parametrize("backend_name", names)


class MutantDevice(ReferenceDevice):
    """The reference device with one op's results doctored after the fact."""

    def __init__(
        self, op: str, doctor: Callable[[np.ndarray], np.ndarray], declines: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.op, self.doctor, self.declines = op, doctor, set(declines)

    def unsupported(self, node: Node) -> str | None:
        if node.op in self.declines:
            return f"mutant declines {node.op}"
        return super().unsupported(node)

    def execute(self, nodes: Sequence[Node]) -> None:
        super().execute(nodes)
        for node in nodes:
            if node.op == self.op and node.out.n:
                values = self.doctor(_read(node.out))
                _scatter(
                    node.out, np.frombuffer(convert.encode(values, node.out.dtype), dtype=np.uint8)
                )


@pytest.fixture
def mutant() -> Iterator[Callable[..., str]]:
    """Register backends named ``mutant_*`` built on :class:`MutantDevice`; unregister after."""
    names: list[str] = []

    def make(
        op: str,
        doctor: Callable[[np.ndarray], np.ndarray] = lambda v: v,
        declines: Sequence[str] = (),
    ) -> str:
        name = f"mutant_{len(names)}"
        plugin = EnginePlugin(name=name, load=lambda params: [MutantDevice(op, doctor, declines)])
        mlplug.register_backend(name, EngineFactory(plugin))
        names.append(name)
        return name

    yield make
    for name in names:
        mlplug.unregister_backend(name)
