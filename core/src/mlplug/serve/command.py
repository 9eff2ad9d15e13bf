"""``mlplug serve``: load a model, start the continuous-batching scheduler, serve HTTP.

The server stack is Starlette on uvicorn: Starlette is the small ASGI toolkit FastAPI is built
on (routing, streaming responses, exception handlers; its one dependency is anyio), and uvicorn
the reference ASGI server. FastAPI's pydantic validation answers bad fields with 422 in its own
format; the OpenAI API answers 400 with ``{"error": {...}}``, which :mod:`mlplug.serve.protocol`
produces directly, so the layer FastAPI adds would only be worked around.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from mlplug.backend import Backend
    from mlplug.serve.scheduler import Scheduler

__all__ = ["add_arguments", "build_server", "serve"]

_MISSING = (
    'mlplug serve needs the server extra ({name} is not installed): pip install "mlplug[serve]"'
)
_DEFAULT_CTX = 4096


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``mlplug serve`` to ``p``."""
    p.add_argument(
        "model",
        nargs="?",
        help="GGUF file or known name (see `mlplug models`; default: the bundled demo model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free one)")
    p.add_argument(
        "-np", "--parallel", type=int, default=4, help="requests decoded together (slots)"
    )
    p.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=0,
        help=f"positions per request, prompt and output (0: the model's, at most {_DEFAULT_CTX})",
    )
    p.add_argument(
        "--queue-size", type=int, default=0, help="requests waiting for a slot (0: --parallel)"
    )
    p.add_argument("-b", "--batch-size", type=int, default=512, help="most tokens per step")
    p.add_argument("--alias", default="", help="model id in /v1/models (default: file name)")
    p.add_argument(
        "--chat-template-file",
        default="",
        help="Jinja2 chat template to use instead of the model's",
    )
    p.add_argument("--backend", default=None)
    p.add_argument("--num-gpu-layers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--flash-attention", action="store_true")


def build_server(
    backend: Backend, args: argparse.Namespace, model_id: str
) -> tuple[Starlette, Scheduler]:
    """Build the scheduler (started) and the application for a loaded ``backend``.

    Raises:
        ValueError: Bad sizes, an unsupported model or a chat template that does not compile.
        ErrNoMem: The cache and compute buffers do not fit.
    """
    from mlplug.models import from_backend
    from mlplug.serve.app import ServerState, create_app
    from mlplug.serve.chat import ChatTemplate
    from mlplug.serve.scheduler import Scheduler
    from mlplug.tokenizer import Tokenizer

    config = backend.config()
    model = from_backend(backend)
    tokenizer = Tokenizer.from_config(config)
    n_ctx_train = model.config.n_ctx_train
    ctx_size = args.ctx_size or min(n_ctx_train or _DEFAULT_CTX, _DEFAULT_CTX)
    if n_ctx_train and ctx_size > n_ctx_train:
        raise ValueError(
            f"[serve] --ctx-size {ctx_size} exceeds the model's context length {n_ctx_train}"
        )
    if args.chat_template_file:
        source = Path(args.chat_template_file).read_text(encoding="utf-8")
        origin = args.chat_template_file
    else:
        source = config.string("tokenizer.chat_template")
        origin = "tokenizer.chat_template"
    template = ChatTemplate(source, tokenizer) if source else None
    reason = (
        f"[serve] the model {model_id!r} has no chat template (no tokenizer.chat_template in "
        "its GGUF file): use /v1/completions, or start the server with --chat-template-file"
    )
    scheduler = Scheduler(
        model,
        tokenizer,
        parallel=args.parallel,
        ctx_size=ctx_size,
        n_batch=args.batch_size,
        queue_size=args.queue_size or args.parallel,
    )
    scheduler.start()
    if template is not None:
        print(f"chat template: {origin}", file=sys.stderr)
    state = ServerState(scheduler, tokenizer, model_id, template, "" if template else reason)
    return create_app(state), scheduler


def serve(args: argparse.Namespace) -> int:
    """Run ``mlplug serve`` with parsed ``args``; return the exit code."""
    for name in ("starlette", "uvicorn", "jinja2"):
        try:
            __import__(name)
        except ImportError:
            print(_MISSING.format(name=name), file=sys.stderr)
            return 1
    from mlplug import catalog
    from mlplug._run import demo_model_path
    from mlplug.errors import ErrNoMem, MlplugError

    try:
        if args.model:
            path = Path(args.model)
            known = catalog.lookup(args.model)
            if known is not None and not path.is_file():
                path = catalog.resolve(known)
            elif not path.is_file():
                print(
                    f"mlplug serve: {path}: no such file (known models: "
                    f"{', '.join(catalog.KNOWN)}; see `mlplug models`)",
                    file=sys.stderr,
                )
                return 2
            return _serve(args, path, args.alias or (args.model if known else path.name))
        print("no model given: serving mlplug's demo model (random weights)", file=sys.stderr)
        with demo_model_path() as path:
            return _serve(args, path, args.alias or path.name)
    except ErrNoMem as err:
        print(err.memory.summary())
        print(f"mlplug serve: {err}", file=sys.stderr)
        return 1
    except (MlplugError, ValueError, KeyError, OSError) as err:
        print(f"mlplug serve: {err}", file=sys.stderr)
        return 1


def _listen(host: str, port: int) -> socket.socket:
    """Return a listening TCP socket bound to ``host``:``port`` (0: a free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)  # uvicorn's default backlog
    except OSError:
        sock.close()
        raise
    return sock


def _serve(args: argparse.Namespace, path: Path, model_id: str) -> int:
    import uvicorn

    import mlplug
    from mlplug._run import _load
    from mlplug.models import check_file

    check_file(path)  # a file no model runs fails before anything is allocated
    params = mlplug.BackendParams(
        num_threads=args.threads,
        num_gpu_layers=args.num_gpu_layers,
        flash_attention=args.flash_attention,
    )
    backend = mlplug.new_backend(str(path), params, backend=args.backend)
    scheduler = None
    try:
        _load(backend, path)
        app, scheduler = build_server(backend, args, model_id)
        s = scheduler
        print(
            f"serving {model_id}: {s.parallel} parallel requests of "
            f"{s.ctx_size} tokens, batches of {s.n_batch}, queue of {s.queue_size}",
            file=sys.stderr,
        )
        print(backend.backend_memory().summary(), file=sys.stderr)
        # Open streams do not hold the shutdown: they are cut after 5 s.
        config = uvicorn.Config(
            app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5
        )
        try:
            # Bound here, not inside uvicorn, so that the address printed is the one listened
            # on (--port 0 picks a free port) and a taken port is an error, not an exit.
            sock = _listen(args.host, args.port)
        except OSError as err:
            print(f"mlplug serve: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
            return 1
        with sock:
            host, port = sock.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"OpenAI API at http://{shown}:{port}/v1", file=sys.stderr, flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                uvicorn.Server(config).run(sockets=[sock])
    finally:
        if scheduler is not None:
            scheduler.close()
        backend.close()
    return 0
