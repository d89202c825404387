"""The files of a local Hugging Face dataset split, found without importing ``datasets``.

``import datasets`` costs 1.5-3 s on 2 cores (it brings pandas and pyarrow's dataset layer), as
much as converting 15 MB of text. For the two plain layouts people keep on disk, the answer is in
the files themselves:

* a folder whose README.md front matter declares ``configs`` with ``data_files`` patterns
  (allenai/c4's layout: ``- config_name: en / data_files: - split: train / path: en/c4-train.*``);
* the packaged builders ``json`` / ``parquet`` with ``--data_files`` paths or glob patterns.

Anything else (a folder without configs, whose splits datasets infers from file names; hub names;
remote or unusual patterns; builder options in the config) returns None, and ``datasets`` resolves
it as before. The result is the same file list datasets resolves: each pattern's matches sorted,
patterns in the order given (tests/data/prep/test_convert_sources.py compares the two).
"""

from __future__ import annotations

import glob
import os
from typing import Any, Sequence

__all__ = ['local_split_files']

_JSON = ('.json', '.jsonl', '.json.gz', '.jsonl.gz')
_PARQUET = ('.parquet',)


def local_split_files(path: str, name: str | None, split: str,
                      data_files: Sequence[str] | str | None) -> tuple[str, list[str]] | None:
    """('json' or 'parquet', the split's files in datasets' order), or None: ask datasets."""
    if path in ('json', 'parquet') and data_files:
        patterns = [data_files] if isinstance(data_files, str) else list(data_files)
        return _files_of(patterns, root='', kind=path) if split == 'train' else None
    if data_files is None and os.path.isdir(path):
        config = _readme_config(path, name)
        patterns = None if config is None else _split_patterns(config.get('data_files'), split)
        return None if patterns is None else _files_of(patterns, root=path, kind=None)
    return None


def _readme_config(folder: str, name: str | None) -> dict[str, Any] | None:
    readme = os.path.join(folder, 'README.md')
    if not os.path.isfile(readme):
        return None
    with open(readme, encoding='utf-8', errors='replace') as f:
        text = f.read()
    if not text.startswith('---'):
        return None
    end = text.find('\n---', 3)
    if end < 0:
        return None
    import yaml

    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    configs = meta.get('configs') if isinstance(meta, dict) else None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        return None
    if name is None:
        chosen = [c for c in configs if c.get('default')] or (configs if len(configs) == 1 else [])
    else:
        chosen = [c for c in configs if c.get('config_name') == name]
    if len(chosen) != 1 or set(chosen[0]) - {'config_name', 'data_files', 'default'}:
        return None  # another config, or builder options (features, field, ...) that datasets applies
    return chosen[0]


def _split_patterns(data_files: Any, split: str) -> list[str] | None:
    if isinstance(data_files, str):
        return [data_files] if split == 'train' else None
    if isinstance(data_files, list) and all(isinstance(p, str) for p in data_files):
        return data_files if split == 'train' else None
    entries = data_files if isinstance(data_files, list) else None
    if isinstance(data_files, dict):
        entries = [{'split': k, 'path': v} for k, v in data_files.items()]
    if entries is None or not all(isinstance(e, dict) for e in entries):
        return None
    for entry in entries:
        if entry.get('split') == split:
            paths = entry.get('path')
            paths = [paths] if isinstance(paths, str) else paths
            return paths if isinstance(paths, list) and all(isinstance(p, str) for p in paths) else None
    return None


def _files_of(patterns: list[str], root: str, kind: str | None) -> tuple[str, list[str]] | None:
    files: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if '://' in pattern or '::' in pattern or '**' in pattern:
            return None
        full = os.path.join(root, os.path.expanduser(pattern))
        matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        matches = [os.path.abspath(m) for m in matches if os.path.isfile(m)]
        if not matches or any(os.path.basename(m).startswith(('.', '_')) for m in matches):
            return None  # datasets says what is missing, and has its own rules for hidden files
        files.extend(m for m in matches if m not in seen)
        seen.update(matches)
    found = {'json' if f.lower().endswith(_JSON) else 'parquet' if f.lower().endswith(_PARQUET) else None
             for f in files}
    if len(found) != 1 or None in found or (kind is not None and found != {kind}):
        return None
    return found.pop(), files
