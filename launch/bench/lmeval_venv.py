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

import fcntl
import subprocess
import sys
import venv
from pathlib import Path

LMEVAL_VERSION = "0.4.13"
REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"
VENV_DIR = BENCH_DIR / "lmeval-venv"
LOCK_FILE = BENCH_DIR / "lmeval-venv.lock"
READY_FILE = VENV_DIR / ".ready"


def _stable_pin(name: str) -> str:
    for line in (REPO / "stacks" / "stable.lock").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.split("#")[0].strip()
    return name


# accelerate: lm-eval's hf model imports it but does not declare it.
PIP_ARGS = [f"lm-eval=={LMEVAL_VERSION}", _stable_pin("torch"), _stable_pin("transformers"),
            _stable_pin("tokenizers"), _stable_pin("numpy"), "accelerate"]


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def _installer() -> list[str]:
    """`uv pip` targeting the venv (pinned uv from stacks/uv.sh), else the venv's own pip."""
    subprocess.run(["bash", "-c", "source stacks/uv.sh"], cwd=REPO, check=False)
    uv = sorted((REPO / ".tools").glob("uv-*/bin/uv"))
    if uv:
        return [str(uv[-1]), "pip", "install", "--python", str(venv_python())]
    return [str(venv_python()), "-m", "pip", "install"]


def ensure_lmeval_venv(log=print) -> Path:
    """The venv's python, building the venv first if no ready one exists (waits on the lock)."""
    BENCH_DIR.mkdir(exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if READY_FILE.exists() and READY_FILE.read_text().startswith(" ".join(PIP_ARGS) + "\n"):
                return venv_python()
            log(f"creating {VENV_DIR} with `pip install {' '.join(PIP_ARGS)}`")
            if not venv_python().exists():
                venv.EnvBuilder(with_pip=True).create(VENV_DIR)
            subprocess.run(_installer() + PIP_ARGS, check=True)
            check = subprocess.run(
                [str(venv_python()), "-c",
                 "import lm_eval, torch, transformers; from importlib.metadata import version; "
                 "print(version('lm_eval'), torch.__version__, transformers.__version__)"],
                check=True, capture_output=True, text=True)
            log(f"lm-eval venv ready: lm_eval/torch/transformers = {check.stdout.strip()}")
            READY_FILE.write_text(" ".join(PIP_ARGS) + "\n" + check.stdout)
            return venv_python()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    print(ensure_lmeval_venv(log=lambda m: print(m, file=sys.stderr)))
