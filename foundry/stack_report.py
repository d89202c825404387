"""One line naming the versions that decide whether foundry works: `python -m foundry.stack_report`.

Printed after every stack install and at the top of every test run (tests/conftest.py), so a
log always says which torch / transformers / streaming / Composer produced it.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "transformers", "mosaicml-streaming", "mosaicml", "numpy")


def stack_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def stack_line(stack: str | None = None) -> str:
    parts = [f"{name} {version}" for name, version in stack_versions().items()]
    prefix = f"stack {stack}: " if stack else "stack: "
    return prefix + ", ".join(parts)


if __name__ == "__main__":
    print(stack_line(sys.argv[1] if len(sys.argv) > 1 else None))
