"""Create (or reuse) the llm-foundry 0.22.0 virtual environment used by the benchmarks.

    python launch/bench/llmfoundry_venv.py        # prints the venv's python once it is ready

The venv lives at `.bench/llmfoundry-venv` (git-ignored) and is shared with the other benchmarks
of this repository: whoever comes first builds it under an exclusive `fcntl.flock` on
`.bench/llmfoundry-venv.lock`, everyone else waits on the lock and then reuses it. The install is
the plain `pip install llm-foundry==0.22.0` (several GB with torch's CUDA wheels, 3-5 minutes).
A venv counts as ready only once `.bench/llmfoundry-venv/.ready` exists, written after a
successful import check, so an interrupted install is redone instead of half-used.
The install goes through the repository's pinned uv (stacks/uv.sh) when it is there: pip's
resolver backtracks through dozens of google-api-core releases for this package set.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import venv
from pathlib import Path

LLMFOUNDRY_VERSION = "0.22.0"
REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"
VENV_DIR = BENCH_DIR / "llmfoundry-venv"
LOCK_FILE = BENCH_DIR / "llmfoundry-venv.lock"
READY_FILE = VENV_DIR / ".ready"
PIP_ARGS = [f"llm-foundry=={LLMFOUNDRY_VERSION}"]


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def _installer() -> list[str]:
    """`uv pip` targeting the venv (pinned uv from stacks/uv.sh), else the venv's own pip."""
    subprocess.run(["bash", "-c", "source stacks/uv.sh"], cwd=REPO, check=False)
    uv = sorted((REPO / ".tools").glob("uv-*/bin/uv"))
    if uv:
        return [str(uv[-1]), "pip", "install", "--python", str(venv_python())]
    return [str(venv_python()), "-m", "pip", "install"]


def ensure_llmfoundry_venv(log=print) -> Path:
    """The venv's python, building the venv first if no ready one exists (waits on the lock)."""
    BENCH_DIR.mkdir(exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another benchmark builds it
        try:
            if READY_FILE.exists():
                return venv_python()
            log(f"creating {VENV_DIR} with `pip install {' '.join(PIP_ARGS)}` (several GB, a few minutes)")
            if not venv_python().exists():
                venv.EnvBuilder(with_pip=True).create(VENV_DIR)
            subprocess.run(_installer() + PIP_ARGS, check=True)
            check = subprocess.run(
                [str(venv_python()), "-c",
                 "import llmfoundry, composer, torch; print(llmfoundry.__version__, composer.__version__, torch.__version__)"],
                check=True, capture_output=True, text=True)
            log(f"llm-foundry venv ready: llmfoundry/composer/torch = {check.stdout.strip()}")
            READY_FILE.write_text(check.stdout)
            return venv_python()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    print(ensure_llmfoundry_venv(log=lambda m: print(m, file=sys.stderr)))
