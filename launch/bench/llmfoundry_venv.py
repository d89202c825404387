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

import sys
from pathlib import Path

from bench_venv import ensure_bench_venv, venv_python as _venv_python

LLMFOUNDRY_VERSION = "0.22.0"
NAME = "llmfoundry-venv"
PIP_ARGS = [f"llm-foundry=={LLMFOUNDRY_VERSION}"]
CHECK = "import llmfoundry, composer, torch; print(llmfoundry.__version__, composer.__version__, torch.__version__)"


def venv_python() -> Path:
    return _venv_python(NAME)


def ensure_llmfoundry_venv(log=print) -> Path:
    """The venv's python, building the venv first if no ready one exists (waits on the lock)."""
    return ensure_bench_venv(NAME, PIP_ARGS, CHECK, log=log, note=" (several GB, a few minutes)")


if __name__ == "__main__":
    print(ensure_llmfoundry_venv(log=lambda m: print(m, file=sys.stderr)))
