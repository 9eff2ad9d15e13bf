"""mlplug: tensor graphs and GGUF models on pluggable compute backends.

The user API. ``import mlplug`` is light: it imports no numpy, cupy or mlx and loads no plugin;
plugins are discovered on the first ``new_backend`` or ``list_backends``. The plugin-author API
is :mod:`mlplug.device`.
"""

from __future__ import annotations

from mlplug.attention import ScaledDotProductAttention
from mlplug.backend import Backend
from mlplug.context import Context
from mlplug.dtype import DType
from mlplug.dump import DumpOptions, dump
from mlplug.errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    CacheFullError,
    ConcurrentUseError,
    ContextError,
    DTypeError,
    DuplicateBackendError,
    ErrNoMem,
    GGUFError,
    LoadCancelledError,
    MlplugError,
    ModelFileError,
    ModelNotInstalledError,
    NotComputedError,
    ShapeError,
    TokenizerError,
    UnsupportedModelError,
    UnsupportedOpError,
)
from mlplug.memory import AllocationStatus, BackendMemory, DeviceMemory, Memory
from mlplug.params import BackendCacheConfig, BackendParams, CacheConfig
from mlplug.registry import (
    BackendInfo,
    list_backends,
    new_backend,
    register_backend,
    unregister_backend,
)
from mlplug.tensor import Tensor

__version__ = "0.1.0"

__all__ = [
    "AllocationStatus",
    "Backend",
    "BackendCacheConfig",
    "BackendInfo",
    "BackendMemory",
    "BackendNotFoundError",
    "BackendParams",
    "BackendUnavailableError",
    "CacheConfig",
    "CacheFullError",
    "ConcurrentUseError",
    "Context",
    "ContextError",
    "DType",
    "DTypeError",
    "DeviceMemory",
    "DumpOptions",
    "DuplicateBackendError",
    "ErrNoMem",
    "GGUFError",
    "LoadCancelledError",
    "Memory",
    "MlplugError",
    "ModelFileError",
    "ModelNotInstalledError",
    "NotComputedError",
    "ScaledDotProductAttention",
    "ShapeError",
    "Tensor",
    "TokenizerError",
    "UnsupportedModelError",
    "UnsupportedOpError",
    "__version__",
    "dump",
    "list_backends",
    "new_backend",
    "register_backend",
    "unregister_backend",
]
