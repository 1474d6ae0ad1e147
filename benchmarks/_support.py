"""What several benchmark scripts share: memory figures of processes (Linux: /proc and getrusage), and
running the script itself again as a fresh child process, so that a measurement's peaks belong to it alone.

Scripts run as ``python benchmarks/<name>.py`` import it as ``from _support import …`` (their folder is
first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MiB: ``VmHWM`` of /proc/self/status where there is one
    (its own address space's high-water mark), else ru_maxrss, which on Linux also keeps the peak of the
    parent it was forked from (a child of a large benchmark would report the parent's memory)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_bytes(pid: int | None = None) -> int:
    """Current resident memory (``VmRSS``) of process ``pid`` (default: this one); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_mb(pid: int | None = None) -> float:
    """:func:`rss_bytes` in MiB."""
    return rss_bytes(pid) / 2**20


def descendants(root: int) -> list[int]:
    """``root`` and every process below it in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def tree_rss_mb(root: int | None = None) -> float:
    """Summed current RSS of ``root`` (default: this process) and all its descendants, MiB."""
    return sum(rss_mb(pid) for pid in descendants(root or os.getpid()))


class TreeSampler(threading.Thread):
    """Peak of :func:`tree_rss_mb` of this process, sampled every ``every`` seconds until ``stop`` is set."""

    def __init__(self, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.every, self.peak_mb, self.stop = every, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.peak_mb = max(self.peak_mb, tree_rss_mb())


def run_self(script: str, *args: str, what: str | None = None) -> dict:
    """Run ``python script *args`` as a fresh process and return the JSON object it prints on its last line
    of stdout; exit with the tail of its stderr when it fails."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{what or ' '.join(args)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
