"""``mlplug run``: load a GGUF model, generate from a prompt, report memory and tokens/s.

Without a model file it runs the demo model shipped in the package (``mlplug/data/demo.gguf``,
written by ``scripts/make_demo_model.py``): a small llama with random weights and a real
tokenizer, so that a fresh install can run the whole pipeline. Its output is gibberish by design.

Steps: construct the backend (weights placed and allocated), load with a progress bar, size the
KV cache and the compute graph (``Llama.reserve``) and print the memory table, then stream the
generated text token by token and print prompt and decode throughput. Ctrl-C stops at once; the
cache and the backend are closed on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["demo_model_path", "run"]

_DEMO_NOTE = (
    "no model given: running mlplug's demo model (random weights, so the text is gibberish by "
    "design; it proves the pipeline: load, KV cache, attention, sampling, streaming)"
)


@contextlib.contextmanager
def demo_model_path() -> Iterator[Path]:
    """Yield a filesystem path of the demo model shipped in the package."""
    from importlib.resources import as_file, files

    with as_file(files("mlplug").joinpath("data", "demo.gguf")) as path:
        yield Path(path)


def _load(backend: object, path: Path) -> None:
    from tqdm import tqdm

    total = path.stat().st_size
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="loading", file=sys.stderr
    ) as bar:

        def progress(fraction: float) -> None:
            bar.update(int(fraction * total) - bar.n)

        backend.load(progress)  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    """Run ``mlplug run`` with parsed ``args``; return the exit code."""
    from mlplug.errors import ErrNoMem, MlplugError

    try:
        if args.model:
            path = Path(args.model)
            if not path.is_file():
                print(f"mlplug run: {path}: no such file", file=sys.stderr)
                return 2
            return _run(args, path)
        print(_DEMO_NOTE, file=sys.stderr)
        with demo_model_path() as path:
            return _run(args, path)
    except ErrNoMem as err:
        print(err.memory.summary())
        print(f"mlplug run: {err}", file=sys.stderr)
        return 1
    except (MlplugError, ValueError, KeyError, OSError) as err:
        # Unsupported or malformed models, unavailable backends: one line, no traceback.
        print(f"mlplug run: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, path: Path) -> int:
    import mlplug
    from mlplug.generate import GenerationStats, generate
    from mlplug.memory import format_bytes
    from mlplug.models.llama import Llama
    from mlplug.tokenizer import Tokenizer

    if args.n_predict < 0 or args.batch_size < 1:
        print("mlplug run: -n must be >= 0 and -b >= 1", file=sys.stderr)
        return 2
    params = mlplug.BackendParams(
        num_threads=args.threads,
        num_gpu_layers=args.num_gpu_layers,
        flash_attention=args.flash_attention,
    )
    backend = mlplug.new_backend(str(path), params, backend=args.backend)
    stats = GenerationStats()
    cache = None
    interrupted = False
    try:
        config = backend.config()
        name = getattr(backend, "name", "") or args.backend or "?"
        print(
            f"model: {path.name} ({config.architecture()}, {config.uint('block_count')} layers, "
            f"{format_bytes(path.stat().st_size)}) on backend {name}",
            file=sys.stderr,
        )
        _load(backend, path)
        model = Llama(backend)
        tokenizer = Tokenizer.from_config(config)
        prompt = tokenizer.encode(args.prompt)
        if not prompt:
            print("mlplug run: the prompt encodes to no tokens", file=sys.stderr)
            return 2
        n_ctx = model.config.n_ctx_train or (len(prompt) + args.n_predict)
        n_predict = args.n_predict
        if len(prompt) + n_predict > n_ctx:
            n_predict = max(0, n_ctx - len(prompt))
            print(
                f"mlplug run: the context holds {n_ctx} tokens: generating {n_predict}",
                file=sys.stderr,
            )
        if len(prompt) > n_ctx:
            print(
                f"mlplug run: the prompt ({len(prompt)} tokens) exceeds the context ({n_ctx})",
                file=sys.stderr,
            )
            return 2
        n_batch = min(len(prompt), args.batch_size)
        cache = model.new_cache(capacity=len(prompt) + max(n_predict, 1), max_batch=n_batch)
        model.reserve(cache, n_batch)
        print(backend.backend_memory().summary())
        print()

        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        stream = tokenizer.decode_stream()
        try:
            for token in generate(
                model,
                cache,
                prompt,
                n_predict,
                temperature=args.temperature,
                seed=args.seed,
                n_batch=n_batch,
                stop=tokenizer.is_eog,
                stats=stats,
            ):
                sys.stdout.write(stream.step(token))
                sys.stdout.flush()
        except KeyboardInterrupt:
            interrupted = True
        sys.stdout.write(stream.flush() + "\n\n")
        print(
            f"prompt: {stats.prompt_tokens} tokens in {stats.prompt_seconds:.3f} s "
            f"({stats.prompt_tokens_per_second:.1f} tokens/s)"
        )
        print(
            f"decode: {stats.decode_tokens} tokens in {stats.decode_seconds:.3f} s "
            f"({stats.decode_tokens_per_second:.1f} tokens/s)"
            + (" [interrupted]" if interrupted else "")
        )
    finally:
        if cache is not None:
            cache.close()
        backend.close()
    return 130 if interrupted else 0
