#!/usr/bin/env bash
# Builds .whl/gpu/: the wheels launch/gpu/check.sh installs on a GPU machine that has no internet,
# CPython 3.12 on Linux x86_64, and torch 2.11 (CUDA 13) + transformers 5 preinstalled.
#   make gpu-wheels            # or: stacks/gpu_wheels.sh [OUT_DIR]
# Carry the folder (`.whl/gpu`, ignored by git) with the working tree; it must stay under 60 MB.
#
# What goes in: foundry itself (a wheel of this working tree, tracked and untracked files alike) and
# every package foundry needs at run time there, at the exact version of stacks/current.lock,
# downloaded as manylinux/py3 binaries for CPython 3.12 (never built here). check.sh installs them
# with `pip install --no-index --no-deps`, skipping every distribution the machine already has, so
# the preinstalled torch / transformers / numpy are never replaced.
#
# What stays out, and why:
#   - torch, triton, torch's nvidia-* / cuda-* libraries: preinstalled (the CUDA 13 build).
#   - what torch and transformers need to import at all, so a machine with both already has it:
#     transformers, tokenizers, huggingface-hub, hf-xet, safetensors, kernels, numpy, regex, pyyaml,
#     packaging, tqdm, filelock, fsspec, typing-extensions, httpx2/httpcore2/h11, typer, click,
#     pydantic(-core), sympy, mpmath, networkx, jinja2, markupsafe, setuptools. (rich and its
#     dependencies come with transformers 5.25 through typer, but not with every transformers 5.x,
#     and Composer's mosaicml-cli imports rich, so they are in: small, and skipped when present.)
#   - streaming's object-store SDKs, imported only for remote URLs of their kind: boto3/botocore/
#     s3transfer/jmespath (s3://; foundry's own s3 code imports boto3 lazily too), google-cloud-*
#     (gs://), oci (oci://), azure-* (azure://), paramiko + cryptography/bcrypt/pynacl (sftp://;
#     Composer imports paramiko under try/except). The check reads MDS from local disk.
#   - matplotlib (+ fonttools, kiwisolver, contourpy, cycler, pyparsing): streaming declares it,
#     torchmetrics imports it only if present (plots).
#   - wandb, tensorboard (+ grpcio, protobuf users): loggers the check does not configure; foundry's
#     registry imports them only when a run names them.
#   - tiktoken (data_prep --fast_bpe only), zstandard (reading .zst input in data_prep only).
#   - the dev extra: pytest, moto, datasets, pyarrow, pandas.
# launch/gpu/check.sh imports Composer, streaming, mcli and every foundry module the check uses right
# after installing, and the CPU smoke run (tests/e2e/test_gpu_check.py; .venv-gpusim, see below)
# trains, checkpoints, resumes and exports with exactly this set on Python 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
source stacks/uv.sh

out=${1:-.whl/gpu}
lock=stacks/current.lock
limit_bytes=60000000
PY=${PYTHON:-python3}

packages=(
    # Composer and its run-time imports
    mosaicml torchmetrics lightning-utilities torch-optimizer pytorch-ranger torchvision pillow
    psutil coolname tabulate py-cpuinfo importlib-metadata zipp requests urllib3 certifi
    charset-normalizer idna
    # mosaicml-cli (`import mcli` in Composer's loggers) and its imports
    mosaicml-cli argcomplete arrow python-dateutil six tzdata backoff gql graphql-core yarl
    multidict propcache anyio sniffio websockets prompt-toolkit wcwidth protobuf questionary
    rich markdown-it-py mdurl pygments ruamel-yaml validators termcolor
    # mosaicml-streaming and its compression codecs (imported at import time)
    mosaicml-streaming brotli python-snappy cramjam xxhash zstd catalogue
    # foundry's own
    omegaconf lion-pytorch
)

# The one exception to the lock's versions: zstd 1.5.7.2 (lock) publishes wheels for CPython <= 3.11
# only; 1.5.7.3 is the next build of the same bindings over the same zstd 1.5.7 library, with CPython
# 3.12 manylinux wheels. (Building 1.5.7.2 from its sdist here would tie the wheel to this machine's
# glibc, 2.34+, instead of manylinux's 2.17.)
declare -A instead_of_lock=([zstd]=1.5.7.3)

pins=()
for name in "${packages[@]}"; do
    line=$(grep -i -E "^${name}==" "$lock" || true)
    if [ -z "$line" ]; then
        echo "stacks/gpu_wheels.sh: $name is not in $lock" >&2
        exit 1
    fi
    if [ -n "${instead_of_lock[$name]:-}" ]; then
        echo "[gpu-wheels] $name==${instead_of_lock[$name]} instead of the lock's $line (no CPython 3.12 wheel of that)"
        line="$name==${instead_of_lock[$name]}"
    fi
    pins+=("$line")
done

rm -rf "$out"
mkdir -p "$out"
echo "[gpu-wheels] downloading ${#pins[@]} wheels (CPython 3.12, manylinux x86_64) into $out"
# pip takes a --platform literally: list the older manylinux tags that manylinux_2_28 machines also run.
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$PY" -m pip download -qq --no-deps --only-binary=:all: --dest "$out" \
    --python-version 3.12 --implementation cp --abi cp312 "${platforms[@]}" "${pins[@]}"

# foundry: built from a clean copy of the working tree (tracked and untracked, not ignored files),
# so stale build/ output in the tree can never end up in the wheel.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$src"
echo "[gpu-wheels] building the foundry wheel from the working tree"
"$UV" build --quiet --wheel --out-dir "$out" "$src"

count=$(ls "$out"/*.whl | wc -l)
bytes=$(cat "$out"/*.whl | wc -c)
printf '[gpu-wheels] %s: %d wheels, %.1f MB (%s bytes; limit %s)\n' "$out" "$count" "$(echo "$bytes / 1000000" | bc -l)" "$bytes" "$limit_bytes"
ls -S "$out" | head -5 | sed 's/^/[gpu-wheels]   largest: /'
if [ "$bytes" -ge "$limit_bytes" ]; then
    echo "stacks/gpu_wheels.sh: the wheelhouse is over 60 MB" >&2
    exit 1
fi
