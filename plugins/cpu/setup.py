"""Build the optional C extension ``mlplug_cpu._native`` (the rest is in pyproject.toml).

The extension is ``optional``: where it cannot be compiled (no compiler, no Python headers) the
install still succeeds and the plugin uses its numpy kernels. No ``-march=native``: the module
picks its AVX2/FMA/F16C kernels at run time, so a built wheel runs on any x86-64.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    _COMPILE, _LINK = ["/O2", "/openmp"], []
else:
    _COMPILE, _LINK = ["-O3", "-fopenmp", "-std=gnu11"], ["-fopenmp"]

setup(
    ext_modules=[
        Extension(
            "mlplug_cpu._native",
            sources=[
                "src/mlplug_cpu/_native.c",
                "src/mlplug_cpu/_native_pool.c",
                "src/mlplug_cpu/_attention.c",
                "src/mlplug_cpu/_native_ops.c",
            ],
            depends=[
                "src/mlplug_cpu/_native_kernels.h",
                "src/mlplug_cpu/_native_half.h",
                "src/mlplug_cpu/_native_pool.h",
                "src/mlplug_cpu/_native_qdot.h",
                "src/mlplug_cpu/_attention_kernel.h",
                "src/mlplug_cpu/_native_ops.h",
                "src/mlplug_cpu/_native_ops_kernels.h",
            ],
            extra_compile_args=_COMPILE,
            extra_link_args=_LINK,
            optional=True,
        )
    ]
)
