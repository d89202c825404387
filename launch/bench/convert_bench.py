"""Conversion speed: foundry vs llm-foundry 0.22.0's convert_dataset_json, same corpus, same machine.

    python launch/bench/convert_bench.py [--mb 40] [--workers auto] [--skip_llmfoundry]

1. Writes a deterministic JSONL corpus of about --mb MB (default 40) under .bench/: the demo
   corpus (stdlib docstrings and sources) cut into 200-6,000 character documents, shuffled
   with a fixed seed and repeated until the size is reached.
2. Creates .bench/llmfoundry-venv (once, shared with the other benchmarks and reused) with
   a plain `pip install llm-foundry==0.22.0` (several GB, 3-5 minutes the first time).
3. Converts the corpus with the GPT-NeoX-20B tokenizer, concat 2048, --eos_text
   '<|endoftext|>' (llm-foundry's default eos_text is empty), no compression: foundry in each
   mode (the default Hugging Face tokenizer on its Rust thread pool; worker processes;
   --fast_bpe, tiktoken's BPE in a process per core), then llm-foundry.
   Each run is a fresh subprocess timed from start to exit (imports included); llm-foundry's
   Hugging Face datasets cache is a fresh temporary folder, so nothing is reused between runs.
4. Prints wall times (best of --repeat interleaved rounds), CPU seconds (user + sys of the whole
   process tree: the load-independent measure of work), tokens/s, the speed-ups, the machine
   load after every run, and checks that every foundry output holds the same token stream as
   llm-foundry's: decodes every sample of both (foundry uint16, llm-foundry int32/uint32) and
   compares every id and every sample boundary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, '.bench')
VENV = os.path.join(BENCH, 'llmfoundry-venv')
NEOX = os.path.join(os.path.dirname(REPO), 'shared', 'tokenizers', 'gpt-neox-20b',
                    'tokenizer.json')
if not os.path.isfile(NEOX):
    NEOX = '/work/shared/tokenizers/gpt-neox-20b/tokenizer.json'
LLMFOUNDRY = 'llm-foundry==0.22.0'
EOS = '<|endoftext|>'
SEQ = 2048


def make_corpus(path: str, megabytes: float, seed: int = 17) -> tuple[int, int]:
    """Deterministic JSONL corpus; returns (documents, bytes)."""
    sys.path.insert(0, REPO)
    from foundry.data.demo_corpus import write_demo_corpus

    source_dir = os.path.join(BENCH, 'demo-corpus')
    if not all(os.path.isfile(os.path.join(source_dir, f'{n}.jsonl')) for n in ('english', 'code')):
        write_demo_corpus(source_dir, 20_000_000)
    texts = []
    for name in ('english', 'code'):
        with open(os.path.join(source_dir, f'{name}.jsonl'), encoding='utf-8') as f:
            texts.extend(json.loads(line)['text'] for line in f)
    rng = random.Random(seed)
    pieces = []
    for text in texts:  # documents of 200-6,000 characters, cut at paragraph breaks
        current, target = '', rng.randint(200, 6000)
        for paragraph in text.split('\n\n'):
            current += paragraph + '\n\n'
            if len(current) > target:
                pieces.append(current)
                current, target = '', rng.randint(200, 6000)
        if current.strip():
            pieces.append(current)
    target_bytes = int(megabytes * 1e6)
    written = docs = 0
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        round_ = 0
        while written < target_bytes:
            order = list(range(len(pieces)))
            rng.shuffle(order)
            for i in order:
                line = json.dumps({'text': pieces[i], 'id': f'{round_}-{i}'}) + '\n'
                f.write(line)
                written += len(line.encode())
                docs += 1
                if written >= target_bytes:
                    break
            round_ += 1
    os.replace(tmp, path)
    return docs, written


def ensure_llmfoundry_venv() -> str:
    """The bench venv's python with llm-foundry 0.22.0, built once and shared.

    Same protocol as the repository's other benchmarks: build under an exclusive flock on
    .bench/llmfoundry-venv.lock, and count the venv as ready only once .ready exists (written
    after an import check), so a concurrent or interrupted build is never half-used.
    """
    import fcntl
    import venv

    python = os.path.join(VENV, 'bin', 'python')
    ready = os.path.join(VENV, '.ready')
    with open(os.path.join(BENCH, 'llmfoundry-venv.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits while another benchmark builds it
        try:
            if os.path.isfile(ready):
                return python
            print(f'[bench] creating {VENV} and installing {LLMFOUNDRY} (several GB, a few '
                  'minutes, once)', flush=True)
            start = time.time()
            if not os.path.isfile(python):
                venv.EnvBuilder(with_pip=True).create(VENV)
            pip = [python, '-m', 'pip']
            subprocess.run(pip + ['install', '-q', '--upgrade', 'pip'], check=True)
            subprocess.run(pip + ['install', LLMFOUNDRY], check=True)
            check = subprocess.run([python, '-c', 'import llmfoundry, composer, torch; print('
                                    'llmfoundry.__version__, composer.__version__, '
                                    'torch.__version__)'],
                                   check=True, capture_output=True, text=True)
            with open(ready, 'w') as f:
                f.write(check.stdout)
            print(f'[bench] llm-foundry venv ready in {time.time() - start:.0f}s: '
                  f'{check.stdout.strip()}', flush=True)
            return python
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def neox_tokenizer_dir() -> str:
    """A folder AutoTokenizer.from_pretrained can load offline: tokenizer.json + its config."""
    folder = os.path.join(BENCH, 'gpt-neox-20b-tokenizer')
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(NEOX, os.path.join(folder, 'tokenizer.json'))
    config = {'tokenizer_class': 'GPTNeoXTokenizer', 'bos_token': EOS, 'eos_token': EOS,
              'unk_token': EOS, 'add_bos_token': False, 'add_eos_token': False,
              'model_max_length': 2048, 'clean_up_tokenization_spaces': False}
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump(config, f)
    return folder


# The body of llm-foundry's scripts/data_prep/convert_dataset_json.py (the script is not in
# the wheel; the wheel ships the function it calls with the same arguments).
LLMFOUNDRY_RUNNER = r'''
import sys
from llmfoundry.command_utils import convert_dataset_json_from_args
path, out_root, tokenizer, concat, eos = sys.argv[1:6]
convert_dataset_json_from_args(path=path, out_root=out_root, compression=None,
                               concat_tokens=int(concat), split='train', tokenizer=tokenizer,
                               bos_text=None, eos_text=eos, no_wrap=False, num_workers=None)
'''


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timed.last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f'[bench] failed: {" ".join(cmd)}\n{proc.stdout[-2000:]}\n'
                         f'{proc.stderr[-4000:]}')
    return seconds, proc


def read_samples(folder: str) -> list:
    """Every sample's token ids, in order, as numpy arrays (any integer dtype)."""
    import numpy as np
    from streaming import StreamingDataset

    ds = StreamingDataset(local=folder, shuffle=False, batch_size=1)
    out = []
    for i in range(len(ds)):
        tokens = ds.get_item(i)['tokens']
        if isinstance(tokens, bytes):
            tokens = np.frombuffer(tokens, dtype=np.int32)
        out.append(np.asarray(tokens).astype(np.int64))
    return out


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f'{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb', type=float, default=40.0, help='corpus size in MB (default 40)')
    parser.add_argument('--modes', default='threads,workers,fast_bpe',
                        help='foundry modes to time: threads (the default: Hugging Face '
                        'tokenizer on its Rust thread pool), workers (one process per core), '
                        'fast_bpe (tiktoken BPE, a process per core), or a number of worker '
                        'processes')
    parser.add_argument('--skip_llmfoundry', action='store_true')
    parser.add_argument('--repeat', type=int, default=1,
                        help='rounds of every mode, interleaved; the best time of each counts')
    args = parser.parse_args()
    if not os.path.isfile(NEOX):
        raise SystemExit(f'[bench] the GPT-NeoX tokenizer is missing at {NEOX}')
    os.makedirs(BENCH, exist_ok=True)

    corpus = os.path.join(BENCH, f'corpus-{args.mb:g}MB.jsonl')
    if not os.path.isfile(corpus):
        docs, size = make_corpus(corpus, args.mb)
        print(f'[bench] wrote {corpus}: {docs:,} documents, {size / 1e6:.1f} MB', flush=True)
    python_lf = None if args.skip_llmfoundry else ensure_llmfoundry_venv()
    tokdir = neox_tokenizer_dir()

    work = tempfile.mkdtemp(prefix='convert-bench-', dir=BENCH)
    modes = args.modes.split(',') + ([] if python_lf is None else ['llm-foundry'])
    times: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}  # user + sys seconds, whole process tree
    loads: list[str] = []
    labels: dict[str, str] = {}
    outputs: dict[str, tuple[int, str]] = {}
    try:
        print(f'[bench] load before runs: {load()}', flush=True)
        for round_ in range(args.repeat):
            for mode in modes:  # round-robin, so load changes hit every mode alike
                out = os.path.join(work, f'{mode}-{round_}')
                if mode == 'llm-foundry':
                    label, seconds, tokens = run_llmfoundry(python_lf, corpus, out, tokdir, work)
                else:
                    label, seconds, tokens = run_foundry(mode, corpus, out)
                    out = os.path.join(out, 'train')
                labels[mode] = label
                times[mode].append(seconds)
                cpu[mode].append(timed.last_cpu)
                loads.append(load())
                if mode in outputs:
                    shutil.rmtree(os.path.dirname(outputs[mode][1]) if mode != 'llm-foundry'
                                  else outputs[mode][1], ignore_errors=True)
                outputs[mode] = (tokens, out)
                print(f'[bench] round {round_ + 1}: {label}: {seconds:.1f}s wall, '
                      f'{timed.last_cpu:.1f} CPU-s, {tokens:,} tokens, {tokens / seconds:,.0f} '
                      f'tokens/s (load {load()})', flush=True)

        print('\n=== conversion benchmark: GPT-NeoX-20B tokenizer, concat 2048, eos '
              f"'{EOS}', {os.path.getsize(corpus) / 1e6:.1f} MB JSONL, {os.cpu_count()} cores ===")
        print('load average (1/5/15 min) after each run: ' + ' | '.join(
            x.split(' (')[0] for x in loads))
        best = {m: min(t) for m, t in times.items()}
        for mode in modes:
            tokens = outputs[mode][0]
            runs = ', '.join(f'{t:.1f}' for t in times[mode])
            print(f'  {labels[mode]:<42} best {best[mode]:6.1f} s  {tokens / best[mode]:>11,.0f} '
                  f'tokens/s  CPU {min(cpu[mode]):6.1f} s  (runs: {runs} s)')
        if python_lf is None:
            return 0
        import numpy as np

        ref = read_samples(outputs['llm-foundry'][1])
        ok = True
        for mode in modes[:-1]:
            ratio = best['llm-foundry'] / best[mode]
            ours = read_samples(outputs[mode][1])
            same = (len(ours) == len(ref) and
                    all(np.array_equal(a, b) for a, b in zip(ours, ref)))
            cpu_ratio = min(cpu['llm-foundry']) / min(cpu[mode])
            print(f'  {labels[mode]}: {ratio:.2f}x llm-foundry in wall time, {cpu_ratio:.2f}x '
                  f'less CPU; same token stream (every id and sample boundary of {len(ref):,} '
                  f'samples): {same}')
            ok = ok and same
        fastest = min(modes[:-1], key=lambda m: best[m])
        ratio = best['llm-foundry'] / best[fastest]
        print(f'  fastest: {labels[fastest]} at {ratio:.2f}x '
              f'({"goal >= 3x met" if ratio >= 3 else "below the 3x goal"})')
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_foundry(mode: str, corpus: str, out: str) -> tuple[str, float, int]:
    workers = {'workers': str(os.cpu_count()), 'threads': '0', 'fast_bpe': None}.get(mode, mode)
    cmd = [sys.executable, os.path.join(REPO, 'data_prep', 'convert_dataset_json.py'),
           '--path', corpus, '--out_root', out, '--split', 'train', '--concat_tokens', str(SEQ),
           '--tokenizer', NEOX, '--eos_text', EOS, '--no_progress']
    if workers is not None:
        cmd += ['--workers', workers]
    if mode == 'fast_bpe':
        cmd += ['--fast_bpe']
    seconds, _ = timed(cmd)
    summary = json.load(open(os.path.join(out, 'train', 'conversion.json')))['summary']
    label = {'workers': f'foundry, {summary["workers"]} worker processes',
             'threads': 'foundry (default), Rust thread pool',
             'fast_bpe': f'foundry --fast_bpe, {summary["workers"]} processes'}.get(
                 mode, f'foundry, {summary["workers"]} worker processes')
    return label, seconds, summary['tokens']


def run_llmfoundry(python_lf: str, corpus: str, out: str, tokdir: str,
                   work: str) -> tuple[str, float, int]:
    runner = os.path.join(work, 'run_llmfoundry.py')
    with open(runner, 'w') as f:
        f.write(LLMFOUNDRY_RUNNER)
    hf_home = tempfile.mkdtemp(prefix='hf-home-', dir=work)  # no dataset cache reused
    env = {'HF_HOME': hf_home, 'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1',
           'TRANSFORMERS_OFFLINE': '1'}
    seconds, _ = timed([python_lf, runner, corpus, out, tokdir, str(SEQ), EOS], env)
    shutil.rmtree(hf_home, ignore_errors=True)
    tokens = sum(len(s) for s in read_samples(out))
    return 'llm-foundry 0.22.0 convert_dataset_json', seconds, tokens


if __name__ == '__main__':
    sys.exit(main())
