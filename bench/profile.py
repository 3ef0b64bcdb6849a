"""py-spy recordings of a Python server during a measured window, and their summaries.

``python -m bench --profile DIR`` writes ``DIR/<server>-<phase>.txt`` in py-spy's ``raw`` format
(collapsed stacks: open it with speedscope, or flamegraph.pl) and prints the functions that
took the most samples. ``python -m bench.profile FILE...`` prints the summary of recordings
again. py-spy is not a dependency: ``pip install py-spy``.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    """The py-spy executable: next to this interpreter, else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds`` (py-spy runs on its own meanwhile)."""
    exe = py_spy()
    if exe is None:
        print("profile: py-spy not found (pip install py-spy)", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` → ``func (file.py)``, keeping roomcast's package path."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m.group("file")
    marker = path.rfind("roomcast/")
    where = path[marker:] if marker >= 0 else path.rsplit("/", 1)[-1]
    return f"{m.group('func')} ({where})"


def summarize(path: Path, top: int = 25, focus: str = "roomcast/") -> str:
    """The hottest functions of a raw recording: self samples, and inclusive samples of the
    functions whose file path contains ``focus``."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if focus in frame:
                inclusive[frame] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path}: {total} samples (the process's busy time)", "  self time:"]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append(f"  inclusive time, functions in {focus}:")
    lines += [f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Summarize py-spy raw recordings.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--focus", default="roomcast/", help="path part for the inclusive list")
    args = parser.parse_args()
    for path in args.files:
        print(summarize(path, args.top, args.focus))


if __name__ == "__main__":
    main()
