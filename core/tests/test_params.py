"""``BackendParams`` checks every field at construction (SEMANTICS §6.2)."""

from __future__ import annotations

import pytest

from mlplug import BackendParams
from mlplug.params import MAX_THREADS


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"num_gpu_layers": 2.5}, TypeError, "num_gpu_layers"),
        ({"num_gpu_layers": "3"}, TypeError, "num_gpu_layers"),
        ({"num_gpu_layers": 2**40}, ValueError, "num_gpu_layers"),
        ({"num_threads": 2**32 + 1}, ValueError, "num_threads"),
        ({"num_threads": MAX_THREADS + 1}, ValueError, "num_threads"),
        ({"num_threads": -1}, ValueError, "num_threads"),
        ({"num_threads": 1.5}, TypeError, "num_threads"),
        ({"num_threads": True}, TypeError, "num_threads"),
        ({"main_gpu": -1}, ValueError, "main_gpu"),
        ({"main_gpu": "0"}, TypeError, "main_gpu"),
        ({"flash_attention": "no"}, TypeError, "flash_attention"),
        ({"flash_attention": 1}, TypeError, "flash_attention"),
        ({"cpu_fallback": "yes"}, TypeError, "cpu_fallback"),
        ({"tensor_split": "3,1"}, TypeError, "tensor_split"),
        ({"tensor_split": 3}, TypeError, "tensor_split"),
        ({"tensor_split": ("3", "1")}, TypeError, "tensor_split"),
        ({"tensor_split": (True, 1)}, TypeError, "tensor_split"),
        ({"tensor_split": (1.0, float("nan"))}, ValueError, "tensor_split"),
        ({"tensor_split": (1.0, -1.0)}, ValueError, "tensor_split"),
        ({"tensor_split": (1.0, float("inf"))}, ValueError, "tensor_split"),
    ],
)
def test_bad_field_is_refused_naming_it(kwargs: dict, error: type, field: str) -> None:
    with pytest.raises(error, match=field):
        BackendParams(**kwargs)


def test_good_values_are_normalised() -> None:
    import numpy as np

    p = BackendParams(
        num_threads=np.int64(3), num_gpu_layers=-1, tensor_split=[3, 1], flash_attention=True
    )
    assert p.num_threads == 3 and type(p.num_threads) is int
    assert p.tensor_split == (3.0, 1.0)
    assert BackendParams(num_threads=MAX_THREADS).num_threads == MAX_THREADS
    # All zeros is the spec's "by free memory" (§6.4 rule 1), not an error.
    assert BackendParams(tensor_split=(0, 0)).tensor_split == (0.0, 0.0)
