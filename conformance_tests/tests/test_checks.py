"""The checks fail on doctored results, and say by how much, against what, and how to rerun.

Each check is called standalone, as a mutant backend's test would.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlplug.dtype import DType
from mlplug.ops import OPS
from mlplug_conformance import checks
from mlplug_conformance.bounds import element_bound, expectation, nmse_cap, working_eps
from mlplug_conformance.cases import find_case
from mlplug_conformance.cases.program import evaluate_reference
from mlplug_conformance.checks import Expected, verify

RERUN = checks.rerun_command("mutant", "add/F32/doctored")


def _add_4096() -> tuple[Expected, np.ndarray]:
    """An F32 add over 4096 elements and its exact (correctly rounded) result."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1, 1, 64, 64)), rng.normal(size=(1, 1, 64, 64))
    a, b = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    exact = a + b
    meta = OPS["add"].infer([_meta(64, 64), _meta(64, 64)], {}).meta
    eps = working_eps("add", DType.F32, [DType.F32, DType.F32])
    bound = element_bound("add", [a, b], {}, meta, exact, eps)
    want = Expected(meta.ne, DType.F32, exact, bound, nmse_cap("add", eps))
    return want, exact.astype(np.float32).astype(np.float64)


def _meta(*ne: int):
    from mlplug.ops import Meta

    return Meta.fresh(DType.F32, ne)


def test_a_correct_result_passes() -> None:
    want, got = _add_4096()
    assert verify(want, want.ne, DType.F32, got, RERUN) is None


def test_one_element_off_by_1e3_in_4096_fails_with_error_bound_and_rerun() -> None:
    want, got = _add_4096()
    got.reshape(-1)[1234] += 1e-3
    failure = verify(want, want.ne, DType.F32, got, RERUN)
    assert failure is not None and failure.check == "bound"
    assert failure.error == pytest.approx(1e-3, rel=1e-3)
    assert 0 < failure.bound < 1e-5
    assert "1 of 4096 elements" in failure.message
    assert "(18, 19, 0, 0)" in failure.message  # ggml order of flat index 1234
    assert failure.message.endswith(
        "rerun: mlplug conformance --backend mutant --case add/F32/doctored"
    )


def test_nan_turned_into_zero_fails() -> None:
    want, got = _add_4096()
    want = Expected(want.ne, want.dtype, want.exact.copy(), want.bound, want.nmse)
    want.exact.reshape(-1)[7] = math.nan
    got.reshape(-1)[7] = 0.0
    failure = verify(want, want.ne, DType.F32, got)
    assert failure is not None and failure.check == "nonfinite"
    assert "NaN positions differ at 1 element" in failure.message


def test_inf_sign_is_checked() -> None:
    failure = checks.check_nonfinite(np.array([math.inf, 1.0]), np.array([-math.inf, 1.0]))
    assert failure is not None and "inf" in failure.message


def test_wrong_shape_and_dtype_fail() -> None:
    want, got = _add_4096()
    failure = verify(want, (64, 32, 2, 1), DType.F32, got)
    assert failure is not None and failure.check == "shape"
    failure = verify(want, want.ne, DType.F16, got)
    assert failure is not None and failure.check == "dtype"


def test_a_small_bias_everywhere_fails_the_nmse_cap() -> None:
    exact = np.random.default_rng(1).normal(size=1000)
    failure = checks.check_nmse(exact * 1.02, exact, 1e-4)
    assert failure is not None and failure.check == "nmse"
    assert failure.error == pytest.approx(4e-4, rel=1e-6) and failure.bound == 1e-4


def test_quantised_products_still_catch_a_wrong_element() -> None:
    case = find_case("mulmat/Q4_0/k256-m33-n3")
    run = evaluate_reference(case, case.values(), False)
    want = expectation(run.result)
    got = want.exact.copy()
    got.reshape(-1)[5] *= -1  # a sign error in one of 99 outputs
    assert verify(want, want.ne, want.dtype, got) is not None
    assert verify(want, want.ne, want.dtype, want.exact.copy()) is None


def test_exact_ops_allow_no_error() -> None:
    case = find_case("permute/F32/1-0-2-3")
    want = expectation(evaluate_reference(case, case.values(), False).result)
    got = want.exact.copy()
    got.reshape(-1)[3] = np.nextafter(np.float32(got.reshape(-1)[3]), np.float32(np.inf))
    failure = verify(want, want.ne, want.dtype, got)
    assert failure is not None and failure.bound == 0.0


def test_argsort_accepts_any_order_of_ties_and_rejects_misorders() -> None:
    keys = np.array([[3.0, 1.0, 4.0, 1.0, 5.0]])
    for good in ([1, 3, 0, 2, 4], [3, 1, 0, 2, 4]):
        assert checks.check_sorted(np.array([good]), keys, "argsort") is None
    assert checks.check_sorted(np.array([[1, 3, 2, 0, 4]]), keys, "argsort") is not None
    assert checks.check_sorted(np.array([[1, 1, 0, 2, 4]]), keys, "argsort") is not None
    assert checks.check_sorted(np.array([[1, 3, 0, 2, 5]]), keys, "argsort") is not None


def test_topk_must_be_the_largest() -> None:
    keys = np.array([[0.1, 0.9, 0.5, 0.3], [4, 3, 2, 1]])
    assert checks.check_sorted(np.array([[1, 2], [0, 1]]), keys, "topk") is None
    assert checks.check_sorted(np.array([[1, 3], [0, 1]]), keys, "topk") is not None
    assert checks.check_sorted(np.array([[2, 1], [0, 1]]), keys, "topk") is not None
    ties = np.array([[2.0, 5.0, 5.0, 1.0]])
    assert checks.check_sorted(np.array([[2, 1]]), ties, "topk") is None


def test_quantised_copy_is_judged_within_one_step() -> None:
    x = np.random.default_rng(2).normal(size=(1, 1, 2, 64))
    want = Expected((64, 2, 1, 1), DType.Q8_0, x, quantised_step=True)
    from mlplug_conformance import convert

    good = convert.round_to(x, DType.Q8_0)
    assert verify(want, want.ne, DType.Q8_0, good) is None
    bad = good.copy()
    bad[0, 0, 1, 5] += 0.2
    assert verify(want, want.ne, DType.Q8_0, bad) is not None


def test_gelu_gets_the_lookup_table_tolerance() -> None:
    x = np.array([0.5, 2.0])
    exact = 0.5 * x * (1 + np.tanh(0.7978845608 * x * (1 + 0.044715 * x * x)))
    meta = OPS["gelu"].infer([_meta(2)], {}).meta
    bound = element_bound("gelu", [x], {}, meta, exact, working_eps("gelu", DType.F32, [DType.F32]))
    assert np.all(bound >= 1e-3 * np.abs(exact) + 1e-4)
