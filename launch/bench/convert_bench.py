"""Conversion speed: foundry vs llm-foundry 0.22.0's convert_dataset_json, same corpus, same machine.

    python launch/bench/convert_bench.py [--shapes pieces,files,huge] [--mb 15,150] [--modes default,hf]

For every corpus shape and size:
1. Writes a deterministic JSONL corpus under .bench/ from the demo corpus (the Python standard
   library's docstrings and sources), shuffled with a fixed seed and repeated to the size:
     pieces  documents cut into 200-6,000 characters at paragraph breaks;
     files   whole files (one document per source file or per module's docstrings: up to ~100 kB);
     huge    one document holding the whole corpus.
2. Converts it with the GPT-NeoX-20B tokenizer, concat 2048, --eos_text '<|endoftext|>'
   (llm-foundry's default eos_text is empty), no compression: foundry with default flags
   (`default`: the encoder it picks, which it prints), with `--encoder hf` (`hf`), and llm-foundry
   (its venv: launch/bench/llmfoundry_venv.py). Each run is a fresh subprocess timed from start to
   exit, imports included; llm-foundry's Hugging Face datasets cache is a fresh temporary folder.
3. Measures the limit: each encoder's raw single-thread speed on the same text (the Rust tokenizer's
   encode_batch_fast, tiktoken's encode_ordinary on the same pre-split text), in tokens/s per core.
4. Prints wall time, tokens/s per core, the ratio to llm-foundry, and checks that every foundry
   output holds the same token stream as llm-foundry's (every id and sample boundary).
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
NEOX = os.path.join(os.path.dirname(REPO), 'shared', 'tokenizers', 'gpt-neox-20b',
                    'tokenizer.json')
if not os.path.isfile(NEOX):
    NEOX = '/work/shared/tokenizers/gpt-neox-20b/tokenizer.json'
EOS = '<|endoftext|>'
SEQ = 2048


def _demo_texts() -> list[str]:
    sys.path.insert(0, REPO)
    from foundry.data.prep.demo_corpus import write_demo_corpus

    source_dir = os.path.join(BENCH, 'demo-corpus')
    if not all(os.path.isfile(os.path.join(source_dir, f'{n}.jsonl')) for n in ('english', 'code')):
        write_demo_corpus(source_dir, 20_000_000)
    texts = []
    for name in ('english', 'code'):
        with open(os.path.join(source_dir, f'{name}.jsonl'), encoding='utf-8') as f:
            texts.extend(json.loads(line)['text'] for line in f)
    return texts


def _cut_pieces(texts: list[str], rng: random.Random) -> list[str]:
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
    return pieces


def make_corpus(path: str, megabytes: float, shape: str = 'pieces', seed: int = 17) -> tuple[int, int]:
    """Deterministic JSONL corpus of one shape; returns (documents, bytes)."""
    rng = random.Random(seed)
    texts = _demo_texts()
    documents = _cut_pieces(texts, rng) if shape == 'pieces' else texts
    target_bytes = int(megabytes * 1e6)
    chosen, size, round_ = [], 0, 0
    while size < target_bytes:
        order = list(range(len(documents)))
        rng.shuffle(order)
        for i in order:
            chosen.append((documents[i], f'{round_}-{i}'))
            size += len(documents[i].encode()) + 40
            if size >= target_bytes:
                break
        round_ += 1
    if shape == 'huge':
        chosen = [(''.join(text for text, _ in chosen), 'all')]
    tmp = path + '.tmp'
    written = 0
    with open(tmp, 'w', encoding='utf-8') as f:
        for text, ident in chosen:
            line = json.dumps({'text': text, 'id': ident}) + '\n'
            f.write(line)
            written += len(line.encode())
    os.replace(tmp, path)
    return len(chosen), written


def encoder_limits(corpus: str, max_chars: int = 3_000_000) -> dict[str, float]:
    """Raw single-thread tokens/s of each encoder on (up to max_chars of) the corpus text."""
    sys.path.insert(0, REPO)
    from tokenizers import Tokenizer

    from foundry.data.prep.fast_bpe import SEGMENT_CHARS, FastBPE, split_at_safe_points

    docs, total = [], 0
    with open(corpus, encoding='utf-8') as f:
        for line in f:
            text = json.loads(line)['text'][:max_chars - total]
            docs.append(text)
            total += len(text)
            if total >= max_chars:
                break
    spec = open(NEOX).read()
    os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # one thread: the per-core limit
    tokenizer = Tokenizer.from_str(spec)
    hf_docs = [p for d in docs for p in split_at_safe_points(d, SEGMENT_CHARS)]
    start = time.perf_counter()
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch_fast(hf_docs, add_special_tokens=False))
    hf = tokens / (time.perf_counter() - start)
    fast = FastBPE.from_tokenizer_json(spec)
    start = time.perf_counter()
    tokens = sum(len(ids) for ids in fast.encode_batch(hf_docs, threads=1))
    return {'hf': hf, 'fast_bpe': tokens / (time.perf_counter() - start)}


def ensure_llmfoundry_venv() -> str:
    """The llm-foundry 0.22.0 venv's python, built once and shared with the other benchmarks."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from llmfoundry_venv import ensure_llmfoundry_venv as ensure

    return str(ensure(log=lambda m: print(f'[bench] {m}', flush=True)))


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


def timed(cmd: list[str], env: dict | None = None,
          may_fail: bool = False) -> tuple[float, subprocess.CompletedProcess]:
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timed.last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timed.peak_rss_gb = after.ru_maxrss / 2**20  # KiB; the largest child so far
    if proc.returncode != 0 and not may_fail:
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
    parser.add_argument('--shapes', default='pieces,files,huge', help='corpus shapes: pieces, files, huge')
    parser.add_argument('--mb', default='15', help='corpus sizes in MB, comma-separated (e.g. 15,150)')
    parser.add_argument('--modes', default='default,hf',
                        help='foundry runs: default (no encoder flag), hf (--encoder hf), fast_bpe, or a '
                        'number of worker processes')
    parser.add_argument('--skip_llmfoundry', action='store_true')
    parser.add_argument('--out', default=None, help='also write the table to this Markdown file')
    args = parser.parse_args()
    if not os.path.isfile(NEOX):
        raise SystemExit(f'[bench] the GPT-NeoX tokenizer is missing at {NEOX}')
    os.makedirs(BENCH, exist_ok=True)
    python_lf = None if args.skip_llmfoundry else ensure_llmfoundry_venv()
    tokdir = neox_tokenizer_dir()
    cores = len(os.sched_getaffinity(0))
    rows, ok = [], True
    for mb in (float(x) for x in args.mb.split(',')):
        for shape in args.shapes.split(','):
            corpus = os.path.join(BENCH, f'corpus-{shape}-{mb:g}MB.jsonl')
            if not os.path.isfile(corpus):
                docs, size = make_corpus(corpus, mb, shape)
                print(f'[bench] wrote {corpus}: {docs:,} documents, {size / 1e6:.1f} MB', flush=True)
            limits = encoder_limits(corpus)
            work = tempfile.mkdtemp(prefix='convert-bench-', dir=BENCH)
            try:
                results = {}
                for mode in args.modes.split(',') + ([] if python_lf is None else ['llm-foundry']):
                    out = os.path.join(work, mode)
                    if mode == 'llm-foundry':
                        label, seconds, tokens = run_llmfoundry(python_lf, corpus, out, tokdir, work)
                    else:
                        label, seconds, tokens = run_foundry(mode, corpus, out)
                        out = os.path.join(out, 'train')
                    results[mode] = (label, seconds, tokens, out)
                    print(f'[bench] {shape} {mb:g} MB: {label}: {seconds:.1f} s, {tokens:,} tokens '
                          f'(load {load()})', flush=True)
                failed = 'llm-foundry' in results and 'FAILED' in results['llm-foundry'][0]
                reference = read_samples(results['llm-foundry'][3]) if 'llm-foundry' in results and not failed else None
                for mode, (label, seconds, tokens, out) in results.items():
                    same = ratio = None
                    if reference is not None and mode != 'llm-foundry':
                        import numpy as np

                        ours = read_samples(out)
                        same = len(ours) == len(reference) and all(np.array_equal(a, b) for a, b in zip(ours, reference))
                        ratio = results['llm-foundry'][1] / seconds
                        ok = ok and same
                    limit = limits['fast_bpe' if 'fast_bpe' in label else 'hf'] if mode != 'llm-foundry' else limits['hf']
                    if failed and mode != 'llm-foundry':
                        ratio = results['llm-foundry'][1] / seconds  # a lower bound: llm-foundry did not finish
                        same = 'no reference: llm-foundry failed (ratio is a lower bound)'
                    rows.append((shape, mb, label, seconds, tokens / seconds / cores, limit, ratio, same))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    table = format_table(rows, cores)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table)
    return 0 if ok else 1


def format_table(rows: list, cores: int) -> str:
    lines = [f'GPT-NeoX-20B tokenizer, concat 2048, eos <|endoftext|>, {cores} cores, load {load()}', '',
             '| shape | MB | converter | wall s | tokens/s per core | encoder limit (1 thread) | vs llm-foundry '
             '| same token stream |', '|---|---|---|---|---|---|---|---|']
    for shape, mb, label, seconds, per_core, limit, ratio, same in rows:
        lines.append(f'| {shape} | {mb:g} | {label} | {seconds:.1f} | {per_core:,.0f} | {limit:,.0f} | '
                     f'{"" if ratio is None else f"{ratio:.2f}x"} | {"" if same is None else same} |')
    return '\n'.join(lines) + '\n'


def run_foundry(mode: str, corpus: str, out: str) -> tuple[str, float, int]:
    cmd = [sys.executable, os.path.join(REPO, 'data_prep', 'convert_dataset_json.py'),
           '--path', corpus, '--out_root', out, '--split', 'train', '--concat_tokens', str(SEQ),
           '--tokenizer', NEOX, '--eos_text', EOS, '--no_progress']
    if mode in ('hf', 'fast_bpe'):
        cmd += ['--encoder', mode]
    elif mode != 'default':
        cmd += ['--workers', mode]
    seconds, _ = timed(cmd)
    summary = json.load(open(os.path.join(out, 'train', 'conversion.json')))['summary']
    processes = f'{summary["workers"]} processes' if summary['workers'] else 'in-process'
    flags = {'default': 'default flags', 'hf': '--encoder hf'}.get(mode, mode)
    return f'foundry {flags} ({summary.get("encoder", "hf")}, {processes})', seconds, summary['tokens']


def run_llmfoundry(python_lf: str, corpus: str, out: str, tokdir: str,
                   work: str) -> tuple[str, float, int]:
    runner = os.path.join(work, 'run_llmfoundry.py')
    with open(runner, 'w') as f:
        f.write(LLMFOUNDRY_RUNNER)
    hf_home = tempfile.mkdtemp(prefix='hf-home-', dir=work)  # no dataset cache reused
    env = {'HF_HOME': hf_home, 'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1',
           'TRANSFORMERS_OFFLINE': '1'}
    seconds, proc = timed([python_lf, runner, corpus, out, tokdir, str(SEQ), EOS], env, may_fail=True)
    shutil.rmtree(hf_home, ignore_errors=True)
    label = 'llm-foundry 0.22.0 convert_dataset_json'
    if proc.returncode != 0:  # e.g. the kernel's OOM killer on one huge document (it holds it all at once)
        how = (f'killed by signal {-proc.returncode}, peak RSS {timed.peak_rss_gb:.1f} GB'
               if proc.returncode < 0 else f'exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}')
        return f'{label} FAILED ({how})', seconds, 0
    return label, seconds, sum(len(s) for s in read_samples(out))


if __name__ == '__main__':
    sys.exit(main())
