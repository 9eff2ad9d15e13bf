"""Models written against the public API: :mod:`mlplug.models.llama` (llama, qwen2)."""

from __future__ import annotations
