"""The protocol package is sans-I/O (STYLE.md #1): it never pulls in asyncio, aiohttp or zmq."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import roomcast.protocol

FORBIDDEN = ("asyncio", "aiohttp", "zmq")
PACKAGE_DIR = Path(roomcast.protocol.__file__).resolve().parent
ROOMCAST_DIR = PACKAGE_DIR.parent
MODULES = sorted(
    ["roomcast.protocol"]
    + [f"roomcast.protocol.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE_DIR)])]
)

# Run in a fresh interpreter: import the protocol modules and report which forbidden top-level
# packages ended up in sys.modules. With BYPASS_PARENT the ``roomcast`` package is registered
# without running its __init__ (which re-exports the aiohttp server), so what is measured is the
# import closure of roomcast.protocol itself.
_PROBE = """
import importlib, json, sys, types
modules, forbidden, bypass_parent, roomcast_dir = json.loads(sys.argv[1])
if bypass_parent:
    parent = types.ModuleType("roomcast")
    parent.__path__ = [roomcast_dir]
    sys.modules["roomcast"] = parent
for name in modules:
    importlib.import_module(name)
print(json.dumps({
    "forbidden": sorted(m for m in sys.modules if m.split(".")[0] in forbidden),
    "roomcast": sorted(m for m in sys.modules if m.split(".")[0] == "roomcast"),
}))
"""


def probe_imports(modules: list[str], *, bypass_parent: bool) -> dict[str, list[str]]:
    args = json.dumps([modules, FORBIDDEN, bypass_parent, str(ROOMCAST_DIR)])
    done = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOMCAST_DIR.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_protocol_modules_are_found() -> None:
    """The module list covers the protocol package (guards the tests below against vacuity)."""
    assert {
        "roomcast.protocol.engineio",
        "roomcast.protocol.socketio",
        "roomcast.protocol.frames",
        "roomcast.protocol.reasons",
    } <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_protocol_module_imports_no_io_stack(module: str) -> None:
    """Importing a protocol module (and what it imports) loads no asyncio, aiohttp or zmq."""
    result = probe_imports([module], bypass_parent=True)
    assert result["forbidden"] == []
    assert module in result["roomcast"]


def test_protocol_depends_only_on_errors_and_ids() -> None:
    """Outside its own package, roomcast.protocol imports only roomcast.errors and roomcast.ids."""
    result = probe_imports(MODULES, bypass_parent=True)
    outside = [m for m in result["roomcast"] if not m.startswith("roomcast.protocol")]
    assert outside == ["roomcast", "roomcast.errors", "roomcast.ids"]


def test_protocol_import_through_real_package_is_pure() -> None:
    """``import roomcast.protocol.*`` through the real package loads no asyncio, aiohttp or zmq."""
    assert probe_imports(MODULES, bypass_parent=False)["forbidden"] == []


def _imported_names(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            names += [
                a.value
                for a in node.args
                if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
        elif isinstance(node, ast.Attribute) and node.attr == "import_module":
            names.append("<importlib.import_module>")
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_protocol_source_has_no_io_imports(path: Path) -> None:
    """No protocol source file imports asyncio, aiohttp or zmq, even inside a function."""
    bad = [n for n in _imported_names(path) if n.split(".")[0] in FORBIDDEN or n.startswith("<")]
    assert bad == []


def test_import_scanner_sees_every_import_form(tmp_path: Path) -> None:
    """The source scan finds plain, from-, nested and dynamic imports (guards against vacuity)."""
    source = tmp_path / "sample.py"
    source.write_text(
        "import asyncio.events\n"
        "from zmq import Context\n"
        "def f():\n"
        "    import aiohttp\n"
        "    __import__('zmq')\n"
        "    importlib.import_module('asyncio')\n",
        encoding="utf-8",
    )
    assert _imported_names(source) == [
        "asyncio.events",
        "zmq",
        "aiohttp",
        "zmq",
        "<importlib.import_module>",
    ]
