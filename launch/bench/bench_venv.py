"""The protocol the benchmarks' side venvs share (llm-foundry, lm-eval): never dependencies of foundry.

A venv lives at `.bench/NAME` (git-ignored). Whoever comes first builds it under an exclusive
`fcntl.flock` on `.bench/NAME.lock`, everyone else waits on the lock and then reuses it. It counts as
ready only once `.bench/NAME/.ready` exists, written after an import check, so an interrupted install
is redone instead of half-used. With `match_args`, `.ready` also records the install arguments, and a
venv built with other ones is updated. The install goes through the repository's pinned uv
(stacks/uv.sh) when it is there: pip's resolver backtracks for minutes on these package sets.
"""

from __future__ import annotations

import fcntl
import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"


def venv_python(name: str, root: Path = BENCH_DIR) -> Path:
    return root / name / "bin" / "python"


def _installer(python: Path) -> list[str]:
    """`uv pip install` targeting the venv (pinned uv from stacks/uv.sh), else the venv's own pip."""
    subprocess.run(["bash", "-c", "source stacks/uv.sh"], cwd=REPO, check=False)
    uv = sorted((REPO / ".tools").glob("uv-*/bin/uv"))
    if uv:
        return [str(uv[-1]), "pip", "install", "--python", str(python)]
    return [str(python), "-m", "pip", "install"]


def ensure_bench_venv(name: str, pip_args: list[str], check_code: str, log=print, match_args: bool = False,
                      note: str = "", root: Path = BENCH_DIR) -> Path:
    """The venv's python, built first if no ready one exists (waits on the lock).

    check_code: Python run in the venv after the install; what it prints is logged and kept in `.ready`.
    root: the folder holding the venv and its lock (a cache outside the clone for builds that take long).
    """
    root.mkdir(parents=True, exist_ok=True)
    folder, python = root / name, venv_python(name, root)
    ready, record = folder / ".ready", " ".join(pip_args) + "\n"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another benchmark builds it
        try:
            if ready.exists() and (not match_args or ready.read_text().startswith(record)):
                return python
            log(f"creating {folder} with `pip install {' '.join(pip_args)}`{note}")
            if not python.exists():
                venv.EnvBuilder(with_pip=True).create(folder)
            subprocess.run(_installer(python) + pip_args, check=True)
            check = subprocess.run([str(python), "-c", check_code], check=True, capture_output=True, text=True)
            log(f"{name} ready: {check.stdout.strip()}")
            ready.write_text((record if match_args else "") + check.stdout)
            return python
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
