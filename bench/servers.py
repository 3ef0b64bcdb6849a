"""The server processes of each scenario: start them on free ports of 127.0.0.1, wait until
they serve, and always stop them.

``single`` and ``connect`` run one process of bench/roomcast_server.py, bench/js/server.mjs or
bench/sio_server.py; ``cluster`` and ``scaleout`` run a roomcast router and N nodes (with a
cluster.toml written for them), or a redis-server and N bench/js/cluster-server.mjs; in the
``cluster`` scenario, ``roomcast-curve`` is the roomcast cluster with CURVE on its bus (keys
made for the run); in the ``single`` scenario, ``roomcast-nometrics`` is the roomcast node with
``metrics.enabled = false``; in both, ``roomcast-recovery`` is roomcast with connection state
recovery on (``[recovery] enabled = true``). :func:`deploy` picks one and yields its
:class:`Deployment`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "bench" / "js"
HOST = "127.0.0.1"

SINGLE_SERVERS: dict[str, Callable[[int], list[str]]] = {
    "roomcast": lambda port: [sys.executable, "-m", "bench.roomcast_server", "--port", str(port)],
    # The same with metrics.enabled = false: what metrics cost on the hot path.
    "roomcast-nometrics": lambda port: [
        sys.executable,
        *("-m", "bench.roomcast_server", "--port", str(port), "--no-metrics"),
    ],
    # The same with connection state recovery on: what numbering and keeping packets cost.
    "roomcast-recovery": lambda port: [
        sys.executable,
        *("-m", "bench.roomcast_server", "--port", str(port), "--recovery"),
    ],
    "node": lambda port: ["node", str(JS_DIR / "server.mjs"), "--port", str(port)],
    "python-socketio": lambda port: [sys.executable, "-m", "bench.sio_server", "--port", str(port)],
}
CLUSTER_SERVERS = ("roomcast", "roomcast-curve", "roomcast-recovery", "node")
#: Servers run in the cluster scenario only (not in scaleout, to keep its run time).
CLUSTER_ONLY = ("roomcast-curve", "roomcast-recovery")
#: Servers run in the single scenario only (not in connect).
SINGLE_ONLY = ("roomcast-nometrics", "roomcast-recovery")
#: The roomcast servers of the single scenario: one Python process, with /admin/stats.
ROOMCAST_SINGLE = ("roomcast", "roomcast-nometrics", "roomcast-recovery")


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the bench process dies (Linux), and leave the
    terminal's process group so Ctrl-C reaches the bench only (which then stops the server)."""
    os.setpgrp()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports nobody listens on right now."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def port_open(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True


def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` (on 127.0.0.1) and decode its JSON body; a non-2xx status raises."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def http_ok(url: str) -> bool:
    try:
        get_json(url, timeout=1.0)
    except (OSError, ValueError):
        return False
    return True


def child_env() -> dict[str, str]:
    """The servers' environment: no inherited ROOMCAST__ overrides (the bench's own config
    decides), unbuffered Python output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST__")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def started(
    label: str,
    argv: list[str],
    log_dir: Path,
    ready: Callable[[], bool],
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process (``env``: more of its environment), wait until ``ready()`` holds, and
    always stop it."""
    log_path = log_dir / f"{label}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**child_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"{label} exited with {proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} was not ready in {timeout:g}s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_process(proc)
        if proc.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
            print(f"[{label} exited with {proc.returncode}]\n{_tail(log_path)}", file=sys.stderr)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Deployment:
    """The running server processes of one server in one scenario."""

    ports: tuple[int, ...]  #: where clients connect; room members alternate between them
    procs: dict[str, subprocess.Popen[bytes]]  #: label -> process; their CPU is the server's
    python: tuple[str, ...] = ()  #: labels of the Python processes (py-spy can record them)
    admin_urls: tuple[str, ...] = ()  #: roomcast nodes, whose /admin/rooms shows membership
    nodes: tuple[str, ...] = ()  #: labels of a cluster's edge nodes (in ``ports`` order)
    redis_port: int = 0  #: a Node cluster's redis-server (its nodes' bus), 0: none
    #: Labels of processes in ``procs`` that are not the server's (a load balancer): their CPU
    #: is reported apart.
    side: tuple[str, ...] = ()
    router_url: str = ""  #: a roomcast cluster's router (its ``/stats``), "": none


@contextlib.contextmanager
def single_server(name: str, log_dir: Path) -> Iterator[Deployment]:
    port = free_port()
    with started(name, SINGLE_SERVERS[name](port), log_dir, lambda: port_open(port)) as proc:
        python = (name,) if name in (*ROOMCAST_SINGLE, "python-socketio") else ()
        yield Deployment((port,), {name: proc}, python)


def curve_keys(directory: Path, nodes: int) -> tuple[str, str]:
    """New key pairs for a router and ``nodes`` nodes in ``directory`` (the nodes' public keys
    allowed); the ``[router]`` and ``[bus]`` lines that use them (each node names its own
    secret key file in ``ROOMCAST__BUS__SECRET_KEY_FILE``, see :func:`roomcast_cluster`)."""
    from roomcast.cluster.curve import write_key_pair

    keys, allowed = directory / "keys", directory / "allowed"
    allowed.mkdir(parents=True, exist_ok=True)
    router_public, router_secret = write_key_pair(keys, "router", force=True)
    for i in range(1, nodes + 1):
        public, _ = write_key_pair(keys, f"n{i}", force=True)
        shutil.copyfile(public, allowed / public.name)
    router = f'secret_key_file = "{router_secret}"\nallowed_keys_dir = "{allowed}"\n'
    bus = f'[bus]\ncurve = true\nrouter_public_key_file = "{router_public}"\n'
    return router, bus


def roomcast_config(
    path: Path,
    xsub: int,
    xpub: int,
    http: int,
    node_ports: list[int],
    extra: tuple[str, str] = ("", ""),
) -> None:
    """A cluster.toml for one router and the nodes on ``node_ports``, all on 127.0.0.1;
    ``extra``: more ``[router]`` lines, and more sections (the keys of :func:`curve_keys`)."""
    nodes = ", ".join(f'"http://{HOST}:{p}"' for p in node_ports)
    router, sections = extra
    path.write_text(
        f"""\
# Written by `python -m bench` for its cluster scenario.
[node]
host = "{HOST}"
shutdown_grace_ms = 500

[router]
host = "{HOST}"
xsub_port = {xsub}
xpub_port = {xpub}
http_port = {http}
{router}
[cluster]
enabled = true

[discovery]
backend = "static"
nodes = [{nodes}]

[[discovery.routers]]
xsub = "tcp://{HOST}:{xsub}"
xpub = "tcp://{HOST}:{xpub}"
http = "http://{HOST}:{http}"

[namespaces."/"]
{sections}"""
    )


@contextlib.contextmanager
def roomcast_cluster(
    log_dir: Path, nodes: int = 2, curve: bool = False, recovery: bool = False
) -> Iterator[Deployment]:
    """``python -m roomcast router`` and ``nodes`` ``... node`` processes (``curve``: with
    CURVE on their bus; ``recovery``: with connection state recovery on)."""
    xsub, xpub, http, *node_ports = free_ports(3 + nodes)
    config = log_dir / "cluster.toml"
    extra = curve_keys(log_dir, nodes) if curve else ("", "")
    if recovery:
        extra = (extra[0], extra[1] + "\n[recovery]\nenabled = true\n")
    roomcast_config(config, xsub, xpub, http, node_ports, extra)
    base = [sys.executable, "-m", "roomcast", "--config", str(config), "--log-level", "warning"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        router_health = f"http://{HOST}:{http}/health"
        procs["router"] = stack.enter_context(
            started("router", [*base, "router"], log_dir, lambda: http_ok(router_health))
        )
        urls = []
        for i, port in enumerate(node_ports, 1):
            argv = [*base, "node", "--id", f"n{i}", "--host", HOST, "--port", str(port)]
            url = f"http://{HOST}:{port}"
            env = {}
            if curve:
                env["ROOMCAST__BUS__SECRET_KEY_FILE"] = str(log_dir / "keys" / f"n{i}.key_secret")
            procs[f"n{i}"] = stack.enter_context(
                started(
                    f"n{i}", argv, log_dir, functools.partial(http_ok, f"{url}/health"), env=env
                )
            )
            urls.append(url)
        labels = tuple(f"n{i}" for i in range(1, nodes + 1))
        yield Deployment(
            tuple(node_ports),
            procs,
            tuple(procs),
            tuple(urls),
            labels,
            router_url=f"http://{HOST}:{http}",
        )


def ensure_redis_server() -> str:
    """The redis-server executable; installs Debian's package when it is missing."""
    exe = shutil.which("redis-server")
    if exe is not None:
        return exe
    if shutil.which("apt-get") is None:
        raise RuntimeError("redis-server not found, and no apt-get to install it")
    print("node: installing redis-server (apt-get install -y redis-server)", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
    if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False).returncode:
        # Maybe the package lists are missing or stale.
        subprocess.run(["apt-get", "update", "-q"], env=env, stdin=subprocess.DEVNULL, check=False)
        subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=False)
    exe = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if exe is None:
        raise RuntimeError("could not install redis-server")
    return exe


@contextlib.contextmanager
def node_redis_cluster(log_dir: Path, nodes: int = 2) -> Iterator[Deployment]:
    """A redis-server and ``nodes`` socket.io processes with the Redis adapter."""
    redis_port, *node_ports = free_ports(1 + nodes)
    redis_argv = [
        ensure_redis_server(),
        "--port",
        str(redis_port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(log_dir),
    ]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    with contextlib.ExitStack() as stack:
        procs["redis"] = stack.enter_context(
            started("redis", redis_argv, log_dir, lambda: port_open(redis_port))
        )
        for i, port in enumerate(node_ports, 1):
            argv = [
                "node",
                str(JS_DIR / "cluster-server.mjs"),
                "--port",
                str(port),
                "--redis",
                f"redis://{HOST}:{redis_port}",
            ]
            procs[f"node{i}"] = stack.enter_context(
                started(f"node{i}", argv, log_dir, functools.partial(port_open, port))
            )
        labels = tuple(f"node{i}" for i in range(1, nodes + 1))
        yield Deployment(tuple(node_ports), procs, nodes=labels, redis_port=redis_port)


def deploy(
    scenario: str, name: str, log_dir: Path, nodes: int = 2
) -> contextlib.AbstractContextManager[Deployment]:
    """The servers of ``name`` in ``scenario`` (``nodes`` edge nodes in a cluster)."""
    if scenario in ("single", "connect"):
        return single_server(name, log_dir)
    if name in ("roomcast", "roomcast-curve", "roomcast-recovery"):
        return roomcast_cluster(
            log_dir, nodes, curve=name == "roomcast-curve", recovery=name == "roomcast-recovery"
        )
    return node_redis_cluster(log_dir, nodes)
