"""(b) data: the MDS dataset and tokenizer, and every run's command line validated before any launch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from profiles import REPO, Profile, gpu_profile
from report import Report, StepFailed
from runs import run_overrides

PREPARE = r'''
import json, sys, time
job = json.load(sys.stdin)
from foundry.data.prep.demo_corpus import build_demo_data
started = time.time()
d = build_demo_data(job['data_root'], seq_len=job['seq'], max_bytes_per_stream=job['corpus_bytes'],
                    vocab_size=job['vocab'])
print('DATA ' + json.dumps({'tokenizer': d.tokenizer, 'streams': d.streams, 'seconds': time.time() - started}),
      flush=True)
started = time.time()
from foundry.config.load import load_config
for label, yaml, overrides in job['configs']:
    try:
        load_config(yaml, overrides)
    except Exception as e:
        print('CONFIG_ERROR ' + json.dumps({'label': label, 'error': f'{type(e).__name__}: {e}'}), flush=True)
        sys.exit(3)
print('CONFIGS ' + json.dumps({'seconds': time.time() - started}), flush=True)
'''


def planned_data(data_root: str) -> dict[str, Any]:
    """Where foundry.data.prep.demo_corpus.build_demo_data puts the tokenizer and the MDS splits."""
    return {'tokenizer': os.path.join(data_root, 'tokenizer.json'), 'out_root': data_root,
            'streams': {s: {split: os.path.join(data_root, s, split) for split in ('train', 'val')}
                        for s in ('english', 'code')}}


def all_command_lines(profile: Profile, data: dict[str, Any], out: str, work: str) -> list[tuple[str, str, list[str]]]:
    """(label, YAML, overrides) of every run of this mode and, in --cpu-smoke mode, of the GPU check too."""
    runs = []
    for prof in ([profile] if profile.device == 'gpu' else [profile, gpu_profile()]):
        for run in prof.models:
            runs.append((f'{prof.device} {run.name}', os.path.join(REPO, run.yaml),
                         run_overrides(prof, run, data, os.path.join(out, 'runs', run.name), None,
                                       f'check-{run.name}', evaluate=not prof.separate_reference)))
        first = prof.models[0]
        runs.append((f'{prof.device} {first.name} with checkpoints', os.path.join(REPO, first.yaml),
                     run_overrides(prof, first, data, os.path.join(out, 'runs', first.name),
                                   os.path.join(work, 'checkpoints', first.name), f'check-{first.name}',
                                   evaluate=True)))
    return runs


def prepare(report: Report, profile: Profile, data_root: str, work: str, env: dict[str, str]) -> dict[str, Any]:
    """(b) Build the MDS data (foundry.data.prep.demo_corpus), then validate with foundry's load_config (every key,
    type and registry name) the command line of every run before any launch: in --cpu-smoke mode that is
    the only check the GPU command lines (seq 2048, flex, compile, full-size models) get. One process."""
    data = planned_data(data_root)
    configs = all_command_lines(profile, data, report.out, work)
    job = {'data_root': data_root, 'seq': profile.seq, 'corpus_bytes': profile.corpus_bytes, 'vocab': profile.vocab,
           'configs': configs}
    log = os.path.join(report.out, 'logs', 'data.log')
    proc = subprocess.run([sys.executable, '-c', PREPARE], input=json.dumps(job), capture_output=True, text=True,
                          env=env, cwd=REPO)
    with open(log, 'w') as f:
        f.write(proc.stdout + proc.stderr)
    lines = {line.split(' ', 1)[0]: json.loads(line.split(' ', 1)[1]) for line in proc.stdout.splitlines()
             if line.split(' ', 1)[0] in ('DATA', 'CONFIGS', 'CONFIG_ERROR')}
    if 'DATA' not in lines:
        raise StepFailed(f'building the MDS data failed; see {log}:\n' + proc.stderr.strip()[-2000:])
    built = lines['DATA']
    if built['tokenizer'] != data['tokenizer'] or built['streams'] != data['streams']:
        raise StepFailed(f'build_demo_data put its output elsewhere than this script expects: {built}')
    samples = {}
    for stream, splits in data['streams'].items():
        for split, folder in splits.items():
            with open(os.path.join(folder, 'index.json')) as f:
                samples[f'{stream}/{split}'] = sum(shard['samples'] for shard in json.load(f)['shards'])
    data.update(samples=samples, seconds=built['seconds'])
    if 'CONFIGS' in lines:
        data['configs'] = {'validated': [label for label, _, _ in configs], 'seconds': lines['CONFIGS']['seconds']}
    else:
        error = lines.get('CONFIG_ERROR') or {'label': '?', 'error': proc.stderr.strip()[-2000:]}
        data['configs'] = {'error': f'the {error["label"]} command line does not validate: {error["error"]}'}
    return data


def describe_data(profile: Profile, data_root: str, r: dict[str, Any]) -> str:
    return (f'english + code MDS, {profile.vocab}-token BPE, samples of {profile.seq} tokens: '
            + ', '.join(f'{k} {v}' for k, v in r['samples'].items()) + f'; under {data_root}')
