"""``roomcast``: start routers and nodes, run a local cluster, inspect and poke the live one.

Every command reads the same ``cluster.toml`` (``--config``, default ``./cluster.toml`` when it
exists) through :mod:`roomcast.config`; command-line flags override single keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from roomcast import config
from roomcast.errors import ConfigError

log = logging.getLogger("roomcast.cli")


def _settings(args: argparse.Namespace, **overrides: Any) -> config.Settings:
    path = args.config
    if path is None and Path("cluster.toml").exists():
        path = "cluster.toml"
    settings = config.load(path)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return settings.replace(**overrides) if overrides else settings


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when installed; SIGINT/SIGTERM cancel it cleanly."""
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, int]], int] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        runner = asyncio.run
    return runner(_cancel_on_signals(main))


async def _cancel_on_signals(main: Coroutine[Any, Any, int]) -> int:
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 0


def load_app(spec: str) -> Callable[[Any], Any]:
    """Import ``module:attr``: a callable taking the Server (sync or async) that adds handlers."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"node.app: expected 'module:attr', got {spec!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    app = getattr(module, attr, None)
    if not callable(app):
        raise ConfigError(f"node.app: {spec} is not callable")
    return app  # type: ignore[no-any-return]


# --- router and node -------------------------------------------------------------------------


def cmd_router(args: argparse.Namespace) -> int:
    """Run one router until interrupted; SIGHUP reloads its allowed keys."""
    from roomcast.cluster.curve import server_keys
    from roomcast.router.router import Router

    settings = _settings(
        args,
        **{
            "router.id": args.id,
            "router.host": args.host,
            "router.xsub_port": args.xsub_port,
            "router.xpub_port": args.xpub_port,
            "router.http_port": args.http_port,
        },
    )
    r = settings.router
    keys = server_keys(settings)  # read now: a bad key file is a config error at once

    async def main() -> int:
        from roomcast.discovery import ServiceInstance, make_discovery
        from roomcast.discovery.metrics import discovery_metrics
        from roomcast.metrics import FunctionCollector

        async with (
            Router(
                r.host,
                r.xsub_port,
                r.xpub_port,
                r.http_port,
                hwm=r.hwm,
                router_id=r.id,
                advertise_host=r.advertise_host,
                curve=keys,
                allow_open_bus=settings.bus.allow_open_bus,
                metrics_settings=settings.metrics,
                admin_token=settings.node.admin_token,
            ) as router,
            make_discovery(settings) as discovery,
        ):
            if router.metrics_registry is not None:
                backend = settings.discovery.backend
                router.metrics_registry.register(
                    FunctionCollector(lambda: discovery_metrics(discovery, backend))
                )
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, router.reload_allowed_keys)
            # Consul: announced with its endpoints, deregistered on the way out (static: no-op).
            await discovery.register(
                ServiceInstance.router(
                    r.id, router.xsub_endpoint, router.xpub_endpoint, router.http_url
                )
            )
            # The bound endpoints (ports given as 0 are the kernel's picks): whoever started
            # the router reads where it is from this line.
            print(
                f"router {r.id} ready: xsub {router.xsub_endpoint} xpub {router.xpub_endpoint}"
                f" http {router.http_url}",
                flush=True,
            )
            healthy = True
            while True:  # the forwarding loop's health is the router's Consul check
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(router.serve_forever(), 1.0)
                    break
                if router.healthy != healthy:
                    healthy = router.healthy
                    await discovery.set_healthy(healthy, "" if healthy else "forwarding stopped")
        return 0

    return _run(main())


def cmd_node(args: argparse.Namespace) -> int:
    """Run one edge node until interrupted."""
    from roomcast.node.server import Server

    overrides: dict[str, Any] = {
        "node.id": args.id,
        "node.host": args.host,
        "node.port": args.port,
        "node.app": args.app,
    }
    if args.standalone:
        overrides["cluster.enabled"] = False
    settings = _settings(args, **overrides)

    async def main() -> int:
        server = Server(settings)
        if settings.node.app:
            result = load_app(settings.node.app)(server)
            if inspect.isawaitable(result):
                await result
        async with server:
            print(f"node {server.node_id} ready: {server.url}", flush=True)
            await server.serve_forever()
        return 0

    return _run(main())


# --- the whole local cluster -----------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """Start a router and N nodes on this machine, logs prefixed, Ctrl-C stops them all."""
    settings = _settings(args)
    count = args.nodes or settings.up.nodes
    up = settings.up
    env = {**os.environ, "ROOMCAST__CLUSTER__ENABLED": "true", "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "roomcast"]
    cfg = ["--config", args.config] if args.config else []
    children: list[tuple[str, list[str]]] = [("router", [*base, "router", *cfg])]
    for i in range(count):
        node_id = f"n{i + 1}"
        port = up.base_port + i
        cmd = [*base, "node", *cfg, "--id", node_id, "--host", up.host, "--port", str(port)]
        if up.app:
            cmd += ["--app", up.app]
        children.append((node_id, cmd))
    for line in admin_ui_hint(settings, count):
        print(f"[up] {line}", flush=True)
    return asyncio.run(_supervise(children, env))


def admin_ui_hint(settings: config.Settings, count: int) -> list[str]:
    """How to open socket.io's Admin UI against the cluster ``roomcast up`` starts."""
    admin, up = settings.admin_ui, settings.up
    if not admin.enabled:
        return ["Admin UI: off ([admin_ui] enabled = true and a password_hash turn it on)"]
    scheme = "https" if settings.http.tls_cert_file else "http"
    nodes = ", ".join(f"{scheme}://{up.host}:{up.base_port + i}" for i in range(count))
    origins = ", ".join(admin.cors_origins) or "none: set admin_ui.cors_origins"
    lines = [
        f"Admin UI: open one of {origins} (or any page of @socket.io/admin-ui's ui/dist served "
        "from an origin listed in admin_ui.cors_origins)",
        f"  server URL: any node ({nodes}); username: {admin.username}; the whole cluster is seen",
    ]
    if admin.namespace != "/admin":
        lines.append(f"  advanced options: admin namespace {admin.namespace}")
    return lines


async def _supervise(children: list[tuple[str, list[str]]], env: dict[str, str]) -> int:
    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    pumps: list[asyncio.Task[None]] = []
    width = max(len(name) for name, _ in children)

    async def pump(name: str, stream: asyncio.StreamReader) -> None:
        prefix = f"[{name:<{width}}] "
        while line := await stream.readline():
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exit_code = 0
    try:
        for name, cmd in children:
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            assert proc.stdout is not None
            procs.append((name, proc))
            pumps.append(asyncio.create_task(pump(name, proc.stdout)))
        waiters = {asyncio.create_task(p.wait()): n for n, p in procs}
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in waiters:
                print(f"[up] {waiters[task]} exited with {task.result()}; stopping the cluster")
                exit_code = 1
        stopper.cancel()
    finally:
        # Nodes first (they announce their departure through the router), then the router.
        for _name, proc in reversed(procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for t in pumps:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 1)
    return exit_code


# --- keys -----------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    """Write a CURVE key pair for the bus, in ZeroMQ's key-file format."""
    from roomcast.cluster.curve import load_public_key, write_key_pair

    try:
        public_file, secret_file = write_key_pair(args.dir, args.name, force=args.force)
    except FileExistsError as exc:
        print(f"roomcast: {exc} exists (--force replaces it)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"roomcast: cannot write keys in {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    public = load_public_key(str(public_file), str(public_file)).decode()
    print(f"public key: {public}")
    print(f"public key file: {public_file}")
    print(f"secret key file: {secret_file}")
    return 0


def _key_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", value):
        raise argparse.ArgumentTypeError("letters, digits, '.', '-' and '_' only")
    return value


# --- argument parsing ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``roomcast`` command line."""
    from roomcast.cli import observe

    parser = argparse.ArgumentParser(
        prog="roomcast",
        description="Start routers and nodes, run a local cluster, inspect and poke the live "
        "one. Every command reads cluster.toml (--config; default ./cluster.toml when present).",
    )
    parser.add_argument("--config", help="path of cluster.toml (default: ./cluster.toml)")
    parser.add_argument("--log-level", default="info")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("router", help="run a router")
    p.add_argument("--id")
    p.add_argument("--host")
    any_port = "0: one the system picks (the ready line says which)"
    p.add_argument("--xsub-port", type=int, help=any_port)
    p.add_argument("--xpub-port", type=int, help=any_port)
    p.add_argument("--http-port", type=int, help=any_port)
    p.set_defaults(func=cmd_router)

    p = sub.add_parser("node", help="run an edge node")
    p.add_argument("--id")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--app", help="module:attr of a function that adds handlers to the Server")
    p.add_argument("--standalone", action="store_true", help="join no cluster")
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("up", help="run a router and N nodes on this machine")
    p.add_argument("--nodes", type=int, help="how many nodes (default: up.nodes)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "keys",
        help="write a CURVE key pair for the bus (NAME.key, NAME.key_secret)",
        description="Write a CURVE key pair in ZeroMQ's key-file format: NAME.key holds the "
        "public key (a router's allowed_keys_dir takes it, or nodes' bus.router_public_key_file "
        "for a router's), NAME.key_secret both keys (bus.secret_key_file or "
        "router.secret_key_file; readable by its owner only).",
    )
    p.add_argument("name", type=_key_name, help="the files' name, e.g. the node's or router's id")
    p.add_argument("--dir", default=".", help="where to write them (default: here)")
    p.add_argument("--force", action="store_true", help="replace existing files of that name")
    p.set_defaults(func=cmd_keys)

    observe.add_commands(sub)
    # ``--config`` is also accepted after the command (``roomcast up --config cluster.toml``, as
    # ``make run`` and ``up``'s own children use it); given there, it wins.
    for command in sub.choices.values():
        command.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"roomcast: config error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
