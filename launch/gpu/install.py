"""(a) install: the wheelhouse into a --target site folder (what the machine lacks only), then the import check."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from typing import Any, Optional

from profiles import REPO
from report import Report, StepFailed


def dist_key(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def installed_distributions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in metadata.distributions():
        name = dist.metadata.get('Name')
        if name:
            found.setdefault(dist_key(name), dist.version)
    return found


def install_wheelhouse(report: Report, wheelhouse: str, site: str) -> dict[str, Any]:
    wheels = sorted(f for f in os.listdir(wheelhouse) if f.endswith('.whl')) if os.path.isdir(wheelhouse) else []
    if not wheels:
        raise StepFailed(f'no wheels in {wheelhouse}: run `make gpu-wheels` where there is internet and carry .whl/gpu')
    shutil.rmtree(site, ignore_errors=True)  # ours: always a fresh install of this wheelhouse
    machine = installed_distributions()
    install, kept = [], []
    for wheel in wheels:
        name, version = wheel.split('-')[:2]
        key = dist_key(name)
        if key in machine:
            kept.append(f'{key} {machine[key]}' + ('' if machine[key] == version else f' (wheelhouse {version})'))
        else:
            install.append(wheel)
    report.say(f'install: {len(wheels)} wheels in {wheelhouse}; {len(kept)} already on this machine, kept as they are: '
               + ', '.join(kept))
    if install:
        cmd = [sys.executable, '-m', 'pip', 'install', '--isolated', '--no-index', '--no-deps', '--no-warn-script-location',
               '--disable-pip-version-check', '--target', site, *[os.path.join(wheelhouse, w) for w in install]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        with open(os.path.join(report.out, 'logs', 'install.log'), 'w') as f:
            f.write(' '.join(cmd) + '\n' + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip()[-2000:]
            if 'No module named pip' in tail:
                tail += '\n(this Python has no pip: `python -m ensurepip` installs it from the standard library)'
            raise StepFailed(f'pip install failed ({proc.returncode}):\n{tail}')
    stale = stale_foundry_files(wheelhouse, wheels)
    return {'wheels': len(wheels), 'installed': [w.split('-')[0] for w in install], 'kept': kept, 'site': site,
            'stale_foundry_files': stale}


def describe_install(r: dict[str, Any]) -> str:
    stale = (f'; WARNING: the foundry wheel predates edits to {len(r["stale_foundry_files"])} files of the '
             f'working tree' if r['stale_foundry_files'] else '')
    return (f'{r["wheels"]} wheels: {len(r["installed"])} installed into {r["site"]}, {len(r["kept"])} already '
            f'on the machine and kept{stale}')


def stale_foundry_files(wheelhouse: str, wheels: list[str]) -> list[str]:
    """foundry/ files whose wheel copy differs from the working tree (the wheel predates an edit)."""
    ours = [w for w in wheels if dist_key(w.split('-')[0]) == 'foundry']
    if not ours:
        return []
    differ = []
    with zipfile.ZipFile(os.path.join(wheelhouse, ours[0])) as z:
        in_wheel = {n for n in z.namelist() if n.startswith('foundry/') and n.endswith('.py')}
        for name in sorted(in_wheel):
            path = os.path.join(REPO, name)
            if not os.path.isfile(path) or open(path, 'rb').read() != z.read(name):
                differ.append(name)
    for root, _, files in os.walk(os.path.join(REPO, 'foundry')):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), REPO)
            if f.endswith('.py') and rel not in in_wheel:
                differ.append(rel)
    return differ


IMPORT_CHECK = r'''
import json, sys, importlib, importlib.metadata as md
mods = ['composer', 'streaming', 'mcli', 'omegaconf', 'lion_pytorch', 'torchvision', 'torchmetrics',
        'foundry.train', 'foundry.cli', 'foundry.export.hf', 'foundry.data.stream.text_loader',
        'foundry.data.prep.demo_corpus',
        'foundry.callbacks', 'foundry.loggers', 'foundry.checkpoint.resume', 'foundry.distributed.fsdp',
        'foundry.distributed.compile', 'foundry.models']
where = {m: importlib.import_module(m).__file__ for m in mods}
import torch
versions = {d: md.version(d) for d in ('torch', 'transformers', 'mosaicml', 'mosaicml-streaming', 'numpy', 'foundry')}
versions['python'] = sys.version.split()[0]
versions['cuda'] = torch.version.cuda
versions['device'] = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
print(json.dumps({'versions': versions, 'where': where}))
'''


def import_check(env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, '-c', IMPORT_CHECK], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise StepFailed('importing Composer / streaming / foundry failed:\n' + proc.stderr.strip()[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_imports(env: dict[str, str], site: Optional[str], device: str) -> dict[str, Any]:
    if site is None and device == 'cpu':
        # Nothing was installed: what runs is this environment's own packages (no 10-20 s import probe).
        from importlib import metadata

        versions = {d: metadata.version(d) for d in ('torch', 'transformers', 'mosaicml', 'mosaicml-streaming',
                                                    'numpy', 'foundry')}
        versions.update(python=sys.version.split()[0], cuda=None, device='cpu')
        return {'versions': versions, 'where': {}}
    result = import_check(env)
    if device == 'gpu' and result['versions']['device'] == 'cpu':
        raise StepFailed('torch sees no CUDA device; run with --cpu-smoke on a machine without a GPU')
    return result
