"""Build (or reuse) llama-cpp-python 0.3.36, compiled from its source package, in a cache outside the clone.

    python launch/bench/llamacpp_venv.py [--sdist llama_cpp_python-0.3.36.tar.gz]   # prints the venv's python

The GGUF checks (tests/export/test_gguf_llamacpp.py, launch/bench/gguf_parity.py) run foundry's files
in the real llama.cpp. PyPI ships llama-cpp-python only as a source package: installing it compiles
llama.cpp with cmake and the C++ compiler, 15-40 minutes on 2 cores, so it is built once per machine
into `$FOUNDRY_LLAMACPP_CACHE` (default `~/.cache/foundry/llamacpp`), where a fresh clone or CI on the
same machine finds it. Tests never build it; they skip naming this command.

The cache holds
    venv/                  the venv, with the bench helpers' lock / `.ready` protocol (bench_venv.py)
    vendor/llama.cpp/      the source package's vendored llama.cpp: convert_hf_to_gguf.py, conversion/,
                           gguf-py/ (llama.cpp's own converter, run on foundry's Hugging Face export)

The build is CPU-only and leaves out what the Python bindings never load (examples, tests, tools,
server, the multimodal library), which roughly halves the compile.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench_venv import ensure_bench_venv, venv_python as _venv_python

VERSION = "0.3.36"
NAME = "venv"
PIP_ARGS = [f"llama-cpp-python=={VERSION}", "--no-binary", "llama-cpp-python"]
# LLAVA_BUILD is the package's own switch for tools/mtmd; the LLAMA_BUILD_* ones are llama.cpp's.
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF "
              "-DGGML_VULKAN=OFF -DGGML_BLAS=OFF")
CHECK = "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
BUILD_COMMAND = "python launch/bench/llamacpp_venv.py"


def cache_dir() -> Path:
    return Path(os.environ.get("FOUNDRY_LLAMACPP_CACHE", "~/.cache/foundry/llamacpp")).expanduser()


def venv_python() -> Path:
    return _venv_python(NAME, cache_dir())


def converter_script() -> Path:
    return cache_dir() / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"


def is_ready() -> bool:
    """Whether both the built venv and the vendored llama.cpp sources are in the cache."""
    root = cache_dir()
    return (root / NAME / ".ready").exists() and (root / "vendor" / ".ready").exists()


def ensure_llamacpp(sdist: str | None = None, log=print) -> Path:
    """The venv's python, building the venv and unpacking llama.cpp's sources first when missing."""
    root = cache_dir()
    env_before = {k: os.environ.get(k) for k in ("CMAKE_ARGS", "CMAKE_BUILD_PARALLEL_LEVEL")}
    os.environ["CMAKE_ARGS"] = CMAKE_ARGS
    os.environ.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "2")
    try:
        pip_args = [str(Path(sdist).resolve())] if sdist else PIP_ARGS
        python = ensure_bench_venv(NAME, pip_args, CHECK, log=log, root=root,
                                   note=f" (compiles llama.cpp: 15-40 minutes on 2 cores; CMAKE_ARGS={CMAKE_ARGS})")
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _ensure_vendor(root, python, sdist, log)
    return python


def _ensure_vendor(root: Path, python: Path, sdist: str | None, log) -> None:
    vendor = root / "vendor"
    vendor.mkdir(parents=True, exist_ok=True)
    with open(root / "vendor.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (vendor / ".ready").exists():
                return
            with tempfile.TemporaryDirectory(prefix="llamacpp-sdist-") as tmp:
                if sdist is None:
                    log(f"downloading the llama-cpp-python {VERSION} source package for llama.cpp's converter")
                    subprocess.run([str(python), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                    f"llama-cpp-python=={VERSION}", "-d", tmp], check=True)
                    sdist = str(next(Path(tmp).glob("llama_cpp_python-*.tar.gz")))
                prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
                shutil.rmtree(vendor / "llama.cpp", ignore_errors=True)
                with tarfile.open(sdist) as tar:
                    members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
                    for m in members:
                        m.name = "llama.cpp/" + m.name[len(prefix):]
                    tar.extractall(vendor, members=members, filter="data")
            (vendor / ".ready").write_text(f"llama-cpp-python {VERSION} vendor/llama.cpp\n")
            log(f"llama.cpp sources in {vendor / 'llama.cpp'}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", default=os.environ.get("FOUNDRY_LLAMACPP_SDIST"),
                        help=f"a local llama_cpp_python-{VERSION}.tar.gz (default: fetched from the registry)")
    args = parser.parse_args()
    print(ensure_llamacpp(args.sdist, log=lambda m: print(m, file=sys.stderr, flush=True)))
