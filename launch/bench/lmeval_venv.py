"""Create (or reuse) the lm-evaluation-harness virtual environment for the ICL cross-check.

    python launch/bench/lmeval_venv.py        # prints the venv's python once it is ready

lm-eval is never a dependency of foundry: it lives in `.bench/lmeval-venv` (git-ignored), built
like `.bench/llmfoundry-venv` (launch/bench/llmfoundry_venv.py): under an exclusive lock on
`.bench/lmeval-venv.lock`, ready only once `.ready` is written after an import check (it records the
install arguments: a venv built with other ones is updated). torch and
transformers are pinned to the `stable` stack's versions (transformers 4.x, which lm-eval 0.4
targets; with a warm uv cache nothing large is downloaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench_venv import REPO, ensure_bench_venv, venv_python as _venv_python

LMEVAL_VERSION = "0.4.13"
NAME = "lmeval-venv"


def _stable_pin(name: str) -> str:
    for line in (REPO / "stacks" / "stable.lock").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("#")[0].strip()
    return name


# accelerate: lm-eval's hf model imports it but does not declare it.
PIP_ARGS = [f"lm-eval=={LMEVAL_VERSION}", _stable_pin("torch"), _stable_pin("transformers"),
            _stable_pin("tokenizers"), _stable_pin("numpy"), "accelerate"]
CHECK = ("import lm_eval, torch, transformers; from importlib.metadata import version; "
         "print(version('lm_eval'), torch.__version__, transformers.__version__)")


def venv_python() -> Path:
    return _venv_python(NAME)


def ensure_lmeval_venv(log=print) -> Path:
    """The venv's python, building (or updating) the venv first if no ready one matches (waits on the lock)."""
    return ensure_bench_venv(NAME, PIP_ARGS, CHECK, log=log, match_args=True)


if __name__ == "__main__":
    print(ensure_lmeval_venv(log=lambda m: print(m, file=sys.stderr)))
