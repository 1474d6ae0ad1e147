"""The package's structure holds: imports only run downward, only cli/ parses arguments, and the
light commands (``--help``, ``verify``) never import torch, diffusers or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "danp_pipeline"

#: What each part may import (besides itself). Anything not listed is an upward import.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "storage": set(),
    "imaging": {"config"},
    "protect": {"config", "imaging", "storage"},
    "manifest": {"config", "storage"},
    "report": {"config", "storage", "imaging", "manifest"},
    "job": {"config", "storage", "imaging", "protect", "manifest", "report"},
    "micro": {"config", "storage", "protect"},
    "evaluation": {"config", "storage", "imaging", "protect", "micro"},
    "demo": {"config", "job", "manifest"},
    "cli": {"config", "storage", "job", "manifest", "report", "evaluation", "micro", "demo"},
    "__init__": {"config", "protect"},
}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_parts(path: Path) -> set[str]:
    """Top-level parts of danp_pipeline that ``path`` imports (relative or absolute imports)."""
    rel = path.relative_to(PACKAGE)
    package = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target] if target else [[alias.name] for alias in node.names]
            elif node.module and node.module.split(".")[0] == "danp_pipeline":
                names = [node.module.split(".")[1:] or [alias.name for alias in node.names][:1]]
            else:
                continue
            for target in names:
                found.add(target[0])
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path):
    part = part_of(path)
    upward = imported_parts(path) - ALLOWED[part] - {part}
    assert not upward, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(upward)}"


def test_only_the_cli_parses_arguments():
    parsing = [str(p.relative_to(PACKAGE)) for p in modules() if part_of(p) != "cli"
               and any(isinstance(n, (ast.Import, ast.ImportFrom)) and "argparse" in
                       ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module])
                       for n in ast.walk(ast.parse(p.read_text())))]
    assert parsing == []


def test_every_subcommand_help_and_verify_run_without_torch(tmp_path):
    script = f"""
import contextlib, io, sys
from danp_pipeline import cli
from danp_pipeline.manifest.output import Output
for name in cli.COMMANDS:
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        cli.entrypoint([name, "--help"])
out = Output.open({str(tmp_path)!r})
out.commit([dict(source_uri="file:///x.jpg", config_sha256="c", status="error", error="unreadable")])
code = cli.entrypoint(["verify", {str(tmp_path)!r}])
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print(code, heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "0 []"


def test_the_cpu_stages_never_load_torch():
    """Reading, decoding and writing run in CPU tasks that Ray starts as the job goes: importing torch there
    cost each new worker 1.5 s of CPU beside the stages it should feed (benchmarks/accelerator_share.py)."""
    script = """
import sys
from danp_pipeline.job import committer, outputs, reader
print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
