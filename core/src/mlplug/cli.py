"""The ``mlplug`` command: ``backends``, ``run``, ``info`` and plugin-provided subcommands.

Plugins add subcommands through the ``mlplug_add_commands`` hook (the conformance suite adds
``mlplug conformance`` this way), so core never imports them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
                    {"name": d.name, "kind": d.kind, "id": d.id,
                     "total_memory": d.total_memory(), "free_memory": d.free_memory()}
                    for d in getattr(backend, "devices", [])
                ]
                backend.close()
            except Exception as err:  # noqa: BLE001 - report, never crash the listing
                device_error = f"{type(err).__name__}: {err}"
        rows.append({
            "name": info.name, "available": info.available, "reason": info.reason,
            "priority": info.priority, "install_hint": info.install_hint,
            "provider": info.provider, "devices": devices, "device_error": device_error,
        })
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
            print(f"{'':<12} {d['name']:<8} {d['kind']:<4} total {format_bytes(d['total_memory'])}"
                  f", free {format_bytes(d['free_memory'])}")
        if row["device_error"]:
            print(f"{'':<12} devices: {row['device_error']}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from mlplug import _demo

    return _demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser, with the subcommands plugins add."""
    parser = argparse.ArgumentParser(prog="mlplug", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list backends, devices, availability and why not")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-devices", dest="devices", action="store_false",
                   help="do not construct backends to list their devices")
    p.set_defaults(func=_cmd_backends)

    p = sub.add_parser("run", help="run a model (or the bundled demo) and print tokens/s")
    p.add_argument("model", nargs="?", help="GGUF file (default: the bundled demo)")
    p.add_argument("-p", "--prompt", default="Hello")
    p.add_argument("-n", "--n-predict", type=int, default=32)
    p.add_argument("--backend", default=None)
    p.add_argument("--num-gpu-layers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--flash-attention", action="store_true")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_run)

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


if __name__ == "__main__":
    sys.exit(main())
