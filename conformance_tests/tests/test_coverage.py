"""Every op has a reference and cases for every dtype it accepts that §3.3 lets a context create;
the rest is listed as "not generated yet", never silently counted."""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pytest

from mlplug.dtype import CREATE
from mlplug.ops import OPS
from mlplug_conformance.bounds import expectation
from mlplug_conformance.cases import all_cases, find_case, not_generated, rng_for
from mlplug_conformance.cases.program import evaluate_reference
from mlplug_conformance.reference import KERNELS


def test_every_op_has_a_reference() -> None:
    assert sorted(set(OPS) - set(KERNELS)) == []
    assert sorted(set(KERNELS) - set(OPS)) == []


def test_every_accepted_dtype_of_every_op_has_cases() -> None:
    seen = defaultdict(set)
    for c in all_cases():
        seen[c.op].add(c.dtype)
    missing = [
        f"{name}/{dt.name}"
        for name, opdef in OPS.items()
        for dt in opdef.dtypes
        if dt not in seen[name]
    ]
    assert missing == []
    assert not_generated() == {}


def test_weight_only_dtypes_come_from_the_file_and_the_rest_from_a_context() -> None:
    for c in all_cases():
        for inp in c.inputs:
            assert inp.from_file == (inp.dtype not in CREATE)


def test_cases_per_op_and_dtype_stay_focused() -> None:
    counts = defaultdict(int)
    for c in all_cases():
        counts[(c.op, c.dtype)] += 1
    assert max(counts.values()) <= 32
    assert min(counts.values()) >= 1
    assert sum(counts.values()) < 2500


def test_case_ids_are_stable_and_well_formed() -> None:
    pattern = re.compile(r"^[a-z0-9_]+/[A-Z0-9_]+/[A-Za-z0-9_.\-]+$")
    for c in all_cases():
        assert pattern.match(c.id), c.id
        assert c.id.split("/")[:2] == [c.op, c.dtype.name]
    assert find_case(all_cases()[0].id) is all_cases()[0]
    with pytest.raises(KeyError):
        find_case("mulmat/F32/no-such-case")


def test_seeds_come_from_the_id_not_from_hash() -> None:
    # sha256-derived: the same in every process and on every machine.
    assert rng_for("mulmat/Q4_0/gqa-k32-m5-n3").integers(0, 1 << 30) == rng_for(
        "mulmat/Q4_0/gqa-k32-m5-n3"
    ).integers(0, 1 << 30)
    assert rng_for("a").integers(0, 1 << 30) == 373547564


def test_inputs_are_identical_between_calls() -> None:
    c = find_case("mulmat/Q4_0/gqa-k32-m5-n3")
    a, b = c.values(), c.values()
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("permuted_v", [False, True])
def test_every_case_evaluates_on_the_reference(permuted_v: bool) -> None:
    for c in all_cases():
        if c.applies(permuted_v):
            run = evaluate_reference(c, c.values(), permuted_v)
            expected = expectation(run.result)
            assert expected.exact.shape == tuple(reversed(run.result.meta.ne)), c.id
