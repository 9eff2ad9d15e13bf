"""Memory mode: the ``BackendMemory`` contract end to end on any backend (SEMANTICS §6–§7).

Runs against synthetic llama-shaped GGUF files written by :mod:`mlplug_conformance.synth` and
only the public API. Checks placement with 0..3 GPUs (the plugin presents them through the
``mlplug_memory_settings`` hook; a plugin without it is checked with the devices it has), the
accounted sizes (a tied ``output.weight`` on the CPU is ``token_embd.weight``'s storage, counted
once; on a GPU it is a copy counted in the output layer), the statuses, ``reserve()`` graph
memory per device, cache accounting,
``ErrNoMem`` under a cap (and that the backend still works and closes), and load progress,
cancellation and values.

The §6.4 placement rule is restated here independently of core (float32 arithmetic via
``numpy.float32``), so a wrong core placement fails this mode.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

import mlplug
from mlplug import AllocationStatus, BackendParams, DType, ErrNoMem, LoadCancelledError
from mlplug.registry import registry

from . import synth

__all__ = ["MemoryResult", "run_memory_mode"]

A, F, U = AllocationStatus.ALLOCATED, AllocationStatus.FAILED, AllocationStatus.UNALLOCATED
BLOCKS = 4
N_EMBD, N_FF, N_VOCAB = 64, 128, 32
# Alignment padding a device may add per tensor (the contract rounds to the device alignment).
MAX_PAD = 256


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """One memory-mode check."""

    id: str
    status: str  # "pass", "FAIL" or "skipped"
    detail: str = ""


class _Fail(Exception):
    pass


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise _Fail(message)


def _weight(be: mlplug.Backend, name: str) -> mlplug.Tensor:
    """Return the model tensor ``name``; fail the check when the backend has none."""
    t = be.get(name)
    if t is None:
        raise _Fail(f"backend.get({name!r}) returned None")
    return t


@contextmanager
def _environment(values: dict[str, str] | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values or {}}
    try:
        for key, value in (values or {}).items():
            if value:
                os.environ[key] = value
            else:
                os.environ.pop(key, None)
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _settings(
    backend: str, gpus: int, gpu_memory: int | None = None, cpu_memory: int | None = None
) -> dict[str, str] | None:
    settings: dict[str, str] | None = registry.hook().mlplug_memory_settings(
        backend=backend, gpus=gpus, gpu_memory=gpu_memory, cpu_memory=cpu_memory
    )
    return settings


def expected_layers(
    blocks: int, n: int, n_gpus: int, main_gpu: int, split: tuple[float, ...]
) -> list[int | None]:
    """Restate §6.4: the GPU index of every layer ``0..blocks`` (``None`` = CPU)."""
    f32 = np.float32
    if n <= 0 or n_gpus == 0:
        return [None] * (blocks + 1)
    total = f32(sum(f32(s) for s in split))
    cumulative, acc = [], f32(0)
    for s in split:
        acc = f32(acc + f32(s))
        cumulative.append(f32(acc / total))
    start = max(0, blocks - n)
    stop = min(start + n, blocks + 1)
    out: list[int | None] = []
    for i in range(blocks + 1):
        if not start <= i < stop:
            out.append(None)
        elif i == blocks:
            out.append(main_gpu)
        else:
            frac = f32(f32(i - start) / f32(stop - start))
            out.append(next(j for j, c in enumerate(cumulative) if frac < c))
    return out


def _layers_seen(mem: mlplug.BackendMemory) -> list[int | None]:
    """Where each layer's weights are, from the report (``None`` = CPU)."""
    seen: list[int | None] = []
    for i in range(len(mem.cpu.weights)):
        where = [j for j, g in enumerate(mem.gpus) if g.weights[i].size]
        seen.append(
            where[0]
            if len(where) == 1 and not mem.cpu.weights[i].size
            else None
            if not where
            else -1
        )
    return seen


class _Runner:
    def __init__(self, backend: str, folder: Path) -> None:
        self.backend = backend
        self.folder = folder
        self.results: list[MemoryResult] = []
        self.f32 = synth.write_llama_gguf(
            folder / "f32.gguf",
            n_layers=BLOCKS,
            n_embd=N_EMBD,
            n_head=4,
            n_head_kv=2,
            n_ff=N_FF,
            n_vocab=N_VOCAB,
            seed=7,
        )
        self.q8 = synth.write_llama_gguf(
            folder / "q8.gguf",
            n_layers=BLOCKS,
            n_embd=N_EMBD,
            n_head=4,
            n_head_kv=2,
            n_ff=N_FF,
            n_vocab=N_VOCAB,
            weight_type=DType.Q8_0,
            tied_output=True,
            seed=8,
        )

    def run(self, check_id: str, fn: Callable[[], str | None]) -> None:
        try:
            detail = fn() or ""
        except _Fail as err:
            self.results.append(MemoryResult(check_id, "FAIL", str(err)))
        except Exception as err:
            self.results.append(MemoryResult(check_id, "FAIL", f"{type(err).__name__}: {err}"))
        else:
            status = "skipped" if detail.startswith("skipped") else "pass"
            self.results.append(MemoryResult(check_id, status, detail))

    def new(
        self, path: Path | None, params: BackendParams, env: dict[str, str] | None
    ) -> mlplug.Backend:
        with _environment(env):
            return mlplug.new_backend(
                None if path is None else str(path), params, backend=self.backend
            )

    # -- checks -----------------------------------------------------------------------------

    def placement(self, gpus: int) -> str | None:
        env = _settings(self.backend, gpus)
        if env is None:
            # The plugin cannot present that many GPUs: check it with the devices it has, once.
            with self.new(None, BackendParams(), None) as be:
                have = len(be.backend_memory().gpus)
            if have != gpus:
                return f"skipped: the plugin cannot present {gpus} GPU(s) (it has {have})"
        split = tuple(float(j + 1) for j in range(gpus))  # deterministic, uneven shares
        for n in range(BLOCKS + 2):
            for main in range(max(gpus, 1)):
                params = BackendParams(num_gpu_layers=n, main_gpu=main, tensor_split=split)
                with self.new(self.f32, params, env) as be:
                    mem = be.backend_memory()
                    _check(
                        len(mem.gpus) == gpus, f"asked for {gpus} GPUs, backend has {len(mem.gpus)}"
                    )
                    want = expected_layers(BLOCKS, n, gpus, main, split)
                    got = _layers_seen(mem)
                    _check(
                        got == want,
                        f"num_gpu_layers={n} main_gpu={main}: layers on "
                        f"{got}, expected {want} (None = CPU)",
                    )
                    _check(mem.input_weights.size > 0, "input weights not accounted")
                    every = [
                        mem.input_weights,
                        *(m for d in (mem.cpu, *mem.gpus) for m in d.weights),
                    ]
                    _check(
                        all(m.status is (A if m.size else U) for m in every),
                        f"statuses after construction: {mem}",
                    )
        return None

    def sizes(self) -> str | None:
        from gguf import GGUFReader

        reader = GGUFReader(self.f32)
        layer_bytes = [0] * (BLOCKS + 1)
        for t in reader.tensors:
            name = t.name
            nbytes = int(t.n_bytes)
            if name.startswith("token_embd"):
                continue
            idx = BLOCKS if not name.startswith("blk.") else int(name.split(".")[1])
            layer_bytes[idx] += nbytes
        with self.new(self.f32, BackendParams(), _settings(self.backend, 0)) as be:
            mem = be.backend_memory()
            embd = N_EMBD * N_VOCAB * 4
            _check(
                embd <= mem.input_weights.size <= embd + MAX_PAD,
                f"input_weights {mem.input_weights.size}, token_embd is {embd} bytes",
            )
            for i, want in enumerate(layer_bytes):
                got = mem.cpu.weights[i].size
                _check(
                    want <= got <= want + MAX_PAD * 12,
                    f"layer {i}: accounted {got} bytes for {want} bytes of F32 tensors",
                )
            _check(str(mem).startswith("InputWeights="), f"text form: {mem}")
        return None

    def tied_output(self) -> str | None:
        # §6.5 rule 1: with the output layer on the CPU, the tied output.weight is the
        # embedding's storage (counted once, in input_weights); on a GPU it is a copy counted in
        # the output layer.
        embd = DType.Q8_0.nbytes(N_EMBD * N_VOCAB)
        norm = N_EMBD * 4
        with self.new(self.q8, BackendParams(), _settings(self.backend, 0)) as be:
            mem = be.backend_memory()
            _check(
                embd <= mem.input_weights.size <= embd + MAX_PAD,
                f"input_weights {mem.input_weights.size}, token_embd is {embd} bytes",
            )
            out = mem.cpu.weights[BLOCKS].size
            _check(
                norm <= out <= norm + MAX_PAD,
                f"output layer on the CPU accounts {out} bytes: only output_norm ({norm} bytes) "
                "is its own, output.weight is token_embd.weight's storage",
            )
        env = _settings(self.backend, 1)
        if env is None:
            return "skipped: the plugin cannot present a GPU (the CPU case passed)"
        with self.new(self.q8, BackendParams(num_gpu_layers=BLOCKS + 1), env) as be:
            mem = be.backend_memory()
            if not mem.gpus:
                return "skipped: no GPU for the output layer (the CPU case passed)"
            out = mem.gpus[0].weights[BLOCKS].size
            _check(
                embd + norm <= out <= embd + norm + 2 * MAX_PAD,
                f"output layer on GPU0 accounts {out} bytes, expected the tied copy ({embd}) "
                f"and output_norm ({norm})",
            )
            _check(embd <= mem.input_weights.size <= embd + MAX_PAD, "input_weights changed")
        return None

    def reserve_and_cache(self) -> str | None:
        gpus = 1 if _settings(self.backend, 1) is not None else 0
        env = _settings(self.backend, gpus)
        params = BackendParams(num_gpu_layers=BLOCKS + 1)
        with self.new(self.f32, params, env) as be:
            be.load()
            ctx = be.new_context()
            x = ctx.input().from_float_slice(np.ones((3, N_EMBD), np.float32), N_EMBD, 3)
            w = _weight(be, f"blk.{BLOCKS - 1}.attn_q.weight")
            y = w.mulmat(ctx, x).rms_norm(ctx, None, 1e-5)
            ctx.forward(y)
            ctx.reserve()
            mem = be.backend_memory()
            holder = mem.gpus[0] if gpus else mem.cpu
            _check(
                holder.graph.size > 0 and holder.graph.status is A,
                f"reserve() recorded no graph memory on {holder.name}: {mem}",
            )
            before = holder.graph.size
            ctx.compute(y)
            after = (be.backend_memory().gpus[0] if gpus else be.backend_memory().cpu).graph
            _check(after.size >= before, "graph memory shrank")
            ref = x.numpy() @ w.numpy().T
            ref = ref / np.sqrt((ref * ref).mean(-1, keepdims=True) + 1e-5)
            _check(np.allclose(y.numpy(), ref, rtol=1e-3, atol=1e-3), "wrong values")
            cache_ctx = be.new_context()
            t = cache_ctx.layer(1).zeros(DType.F16, 64, 4)
            mem = be.backend_memory()
            dev = mem.gpus[0] if gpus else mem.cpu
            _check(
                dev.cache[1].size >= t.dtype().nbytes(256) and dev.cache[1].status is A,
                f"layer(1) buffer not counted in cache[1] of {dev.name}: {mem}",
            )
            cache_ctx.close()
            ctx.close()
        return None

    def out_of_memory(self) -> str | None:
        per_layer = (
            2 * N_EMBD + 2 * N_EMBD * N_EMBD + 2 * N_EMBD * N_EMBD // 2 + 3 * N_EMBD * N_FF
        ) * 4
        cap = int(per_layer * 1.5)
        env = _settings(self.backend, 2, gpu_memory=cap)
        if env is not None:
            # GPU0 gets layer 0 and fits; GPU1 gets layers 1-3 and fails; the CPU is untried.
            params = BackendParams(num_gpu_layers=BLOCKS, tensor_split=(1, 3))
            first_ok = True
        else:
            env = _settings(self.backend, 1, gpu_memory=cap)
            if env is None:
                return self.out_of_memory_cpu(per_layer)
            params = BackendParams(num_gpu_layers=BLOCKS)
            first_ok = False
        with _environment(env):
            try:
                mlplug.new_backend(str(self.f32), params, backend=self.backend).close()
            except ErrNoMem as err:
                mem = err.memory
                self.error_form(err)
                statuses = [{m.status for m in g.weights if m.size} for g in mem.gpus]
                if first_ok:
                    _check(
                        statuses[0] == {A} and F in statuses[1],
                        f"expected GPU0 allocated and GPU1 failed: {mem}",
                    )
                else:
                    _check(F in statuses[0], f"expected the GPU's weights failed: {mem}")
                _check(mem.input_weights.status is U, f"CPU not yet attempted: {mem}")
            else:
                raise _Fail("no ErrNoMem for weights over the GPU cap")
            # The same cap with fewer layers fits, computes and closes; a cache over the cap
            # fails cleanly and the backend still computes.
            be = mlplug.new_backend(
                str(self.f32), BackendParams(num_gpu_layers=1), backend=self.backend
            )
            self.cache_over_cap(be, BLOCKS - 1, per_layer, gpu=True)
        return None

    def out_of_memory_cpu(self, per_layer: int) -> str | None:
        """The same contract on a plugin that can only cap its CPU device."""
        total = per_layer * (BLOCKS + 1) + N_EMBD * N_VOCAB * 4 * 2
        env = _settings(self.backend, 0, cpu_memory=total // 2)
        if env is None:
            return "skipped: the plugin has no memory-cap setting (mlplug_memory_settings)"
        with _environment(env):
            try:
                mlplug.new_backend(str(self.f32), BackendParams(), backend=self.backend).close()
            except ErrNoMem as err:
                mem = err.memory
                self.error_form(err)
                _check(
                    mem.input_weights.status is F
                    and all(m.status is F for m in mem.cpu.weights if m.size),
                    f"expected the CPU weights FAILED: {mem}",
                )
            else:
                raise _Fail("no ErrNoMem for weights over the CPU cap")
        with _environment(_settings(self.backend, 0, cpu_memory=total * 2)):
            be = mlplug.new_backend(str(self.f32), BackendParams(), backend=self.backend)
            self.cache_over_cap(be, 1, total, gpu=False)
        return None

    @staticmethod
    def error_form(err: ErrNoMem) -> None:
        _check(isinstance(err, MemoryError), "ErrNoMem is not a MemoryError")
        _check(
            str(err) == f"insufficient memory - required allocations: {err.memory}",
            f"message: {err}",
        )

    @staticmethod
    def cache_over_cap(be: mlplug.Backend, layer: int, elements: int, *, gpu: bool) -> None:
        be.load()
        ctx = be.new_context()
        try:
            ctx.layer(layer).zeros(DType.F32, elements)
        except ErrNoMem as err:
            dev = err.memory.gpus[0] if gpu else err.memory.cpu
            cache = dev.cache[layer]
            _check(
                cache.status is F and cache.size >= elements * 4,
                f"cache entry after a failed buffer: {cache}",
            )
        else:
            raise _Fail("no ErrNoMem for a cache buffer over the cap")
        small = ctx.layer(layer).from_float_slice([1.0, 2.0], 2)
        out = small.scale(ctx, 2.0)
        ctx.forward(out).compute(out)
        _check(out.floats().tolist() == [2.0, 4.0], "backend unusable after ErrNoMem")
        be.close()

    def load(self) -> str | None:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        env = _settings(self.backend, 0)
        with self.new(self.q8, BackendParams(), env) as be:
            seen: list[float] = []
            be.load(progress=seen.append)
            _check(bool(seen) and seen[-1] == 1.0, f"last progress {seen[-1:]} is not 1.0")
            _check(
                seen == sorted(seen) and all(0.0 <= s <= 1.0 for s in seen),
                "progress not non-decreasing in [0, 1]",
            )
            for t in GGUFReader(self.q8).tensors:
                want = dequantize(t.data, t.tensor_type).reshape(-1)
                got = _weight(be, t.name).floats()
                _check(np.array_equal(got, want.astype(np.float32)), f"{t.name} differs")
            tied = be.get("output.weight")
            _check(
                tied is not None
                and np.array_equal(tied.floats(), _weight(be, "token_embd.weight").floats()),
                "tied output.weight",
            )
            event = threading.Event()
            event.set()
            try:
                be.load(cancel=event)
            except LoadCancelledError:
                pass
            else:
                raise _Fail("load(cancel=<set event>) did not raise LoadCancelledError")
            be.load(cancel=lambda: False)  # loads again fully
        with self.new(None, BackendParams(), env) as be:
            calls: list[float] = []
            be.load(progress=calls.append)
            _check(calls == [1.0], f"model-less load progress {calls}")
        return None


def run_memory_mode(backend: str) -> list[MemoryResult]:
    """Run every memory-mode check against ``backend``; never raises for a failed check."""
    with tempfile.TemporaryDirectory(prefix="mlplug-memory-") as folder:
        runner = _Runner(backend, Path(folder))
        for gpus in range(4):
            runner.run(f"memory/placement/{gpus}-gpus", partial(runner.placement, gpus))
        runner.run("memory/sizes", runner.sizes)
        runner.run("memory/tied-output", runner.tied_output)
        runner.run("memory/reserve-and-cache", runner.reserve_and_cache)
        runner.run("memory/out-of-memory", runner.out_of_memory)
        runner.run("memory/load", runner.load)
    return runner.results


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    results = run_memory_mode(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    for r in results:
        print(f"{r.status:<8} {r.id:<32} {r.detail}")
    sys.exit(1 if any(r.status == "FAIL" for r in results) else 0)
