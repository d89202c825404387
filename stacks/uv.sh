# Sourced by the stack scripts: puts a pinned uv in .tools/ (once) and sets $UV.
# uv resolves with overrides (lifting Composer's stale pins) and installs a lock exactly,
# several times faster than pip for torch's multi-gigabyte CUDA wheels.
UV_VERSION=0.13.9
UV=".tools/uv-$UV_VERSION/bin/uv"
if [ ! -x "$UV" ]; then
    ${PYTHON:-python3} -m venv ".tools/uv-$UV_VERSION" >/dev/null
    ".tools/uv-$UV_VERSION/bin/python" -m pip install --quiet "uv==$UV_VERSION"
fi
