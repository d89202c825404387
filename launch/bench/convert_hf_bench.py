"""The Hugging Face dataset path: foundry's convert_dataset_hf vs llm-foundry 0.22.0's, same data.

    python launch/bench/convert_hf_bench.py [--mb 15] [--shape pieces]

llm-foundry's convert_dataset_hf only knows `allenai/c4` and `the_pile`, and reads them from the hub.
Nothing can be downloaded here, so the bench writes a local folder in allenai/c4's layout (a README
whose YAML declares the `en` config, `en/c4-train.*.json.gz` shards with c4's fields) holding a
convert_bench.py corpus, and runs both converters on it from a working directory where `allenai/c4`
is that folder: llm-foundry with `--dataset allenai/c4 --data_subset en --splits train_small`
(its split that reads up to 100,000 documents of c4's train), foundry with `--dataset <folder>
--data_subset en --splits train` and default flags. GPT-NeoX-20B tokenizer, concat 2048, eos
<|endoftext|>. Prints wall times (fresh processes, imports included) and checks the token streams.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from convert_bench import (BENCH, EOS, NEOX, REPO, SEQ, ensure_llmfoundry_venv, load, make_corpus,  # noqa: E402
                           neox_tokenizer_dir, read_samples, timed)

C4_README = """---
configs:
- config_name: en
  data_files:
  - split: train
    path: en/c4-train.*.json.gz
---
"""

LLMFOUNDRY_HF_RUNNER = r'''
import sys
from llmfoundry.command_utils import convert_dataset_hf_from_args
out_root, tokenizer, concat, eos = sys.argv[1:5]
convert_dataset_hf_from_args(dataset='allenai/c4', data_subset='en', splits=['train_small'], out_root=out_root,
                             compression=None, concat_tokens=int(concat), tokenizer=tokenizer,
                             tokenizer_kwargs=None, bos_text=None, eos_text=eos, no_wrap=False, num_workers=None)
'''


def write_c4_layout(corpus: str, root: str, shards: int = 1) -> int:
    """The corpus as allenai/c4's layout. One shard by default: llm-foundry's loader splits the shards of a
    streamed dataset across its DataLoader workers and interleaves their outputs, so with several shards its
    token stream is in another order than the files' (same documents)."""
    folder = os.path.join(root, 'allenai', 'c4')
    os.makedirs(os.path.join(folder, 'en'))
    with open(os.path.join(folder, 'README.md'), 'w') as f:
        f.write(C4_README)
    with open(corpus, encoding='utf-8') as f:
        texts = [json.loads(line)['text'] for line in f]
    per = -(-len(texts) // shards)
    for i in range(shards):
        path = os.path.join(folder, 'en', f'c4-train.{i:05d}-of-{shards:05d}.json.gz')
        with gzip.open(path, 'wt', encoding='utf-8') as f:
            for j, text in enumerate(texts[i * per:(i + 1) * per]):
                f.write(json.dumps({'text': text, 'timestamp': '2019-04-25T12:57:54Z',
                                    'url': f'https://example.com/{i}/{j}'}) + '\n')
    return len(texts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb', type=float, default=15.0)
    parser.add_argument('--shape', default='pieces', choices=('pieces', 'files'))
    parser.add_argument('--out', default=None, help='also write the result to this Markdown file')
    args = parser.parse_args()
    os.makedirs(BENCH, exist_ok=True)
    corpus = os.path.join(BENCH, f'corpus-{args.shape}-{args.mb:g}MB.jsonl')
    if not os.path.isfile(corpus):
        make_corpus(corpus, args.mb, args.shape)
    python_lf = ensure_llmfoundry_venv()
    tokdir = neox_tokenizer_dir()
    work = tempfile.mkdtemp(prefix='convert-hf-bench-', dir=BENCH)
    try:
        documents = write_c4_layout(corpus, work)
        assert documents <= 100_000, 'llm-foundry train_small reads at most 100,000 documents'
        offline = {'HF_DATASETS_OFFLINE': '1', 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1',
                   'HF_HOME': os.path.join(work, 'hf-home')}
        runner = os.path.join(work, 'run_llmfoundry_hf.py')
        with open(runner, 'w') as f:
            f.write(LLMFOUNDRY_HF_RUNNER)
        lf_out = os.path.join(work, 'llmfoundry')
        lf_seconds, _ = timed_in(work, [python_lf, runner, lf_out, tokdir, str(SEQ), EOS], offline)
        ours_out = os.path.join(work, 'foundry')
        ours_seconds, proc = timed_in(work, [sys.executable, os.path.join(REPO, 'data_prep', 'convert_dataset_hf.py'),
                                             '--dataset', os.path.join(work, 'allenai', 'c4'), '--data_subset', 'en',
                                             '--splits', 'train', '--out_root', ours_out, '--concat_tokens', str(SEQ),
                                             '--tokenizer', NEOX, '--eos_text', EOS, '--no_progress'],
                                      {**offline, 'HF_HOME': os.path.join(work, 'hf-home-2')})
        import numpy as np

        ref = read_samples(os.path.join(lf_out, 'train_small'))
        ours = read_samples(os.path.join(ours_out, 'train'))
        same = len(ref) == len(ours) and all(np.array_equal(a, b) for a, b in zip(ours, ref))
        encoder = next((line for line in proc.stdout.splitlines() if line.startswith('encoder:')), '?')
        tokens = sum(len(s) for s in ours)
        report = (f'convert_dataset_hf on a local allenai/c4-layout folder ({documents:,} documents, '
                  f'{os.path.getsize(corpus) / 1e6:.1f} MB, shape {args.shape}; {tokens:,} tokens; load {load()})\n\n'
                  f'| converter | wall s | vs llm-foundry | same token stream |\n|---|---|---|---|\n'
                  f'| foundry convert_dataset_hf.py, default flags ({encoder.split(" (")[0]}) | {ours_seconds:.1f} | '
                  f'{lf_seconds / ours_seconds:.2f}x | {same} |\n'
                  f'| llm-foundry 0.22.0 convert_dataset_hf (train_small) | {lf_seconds:.1f} | | |\n')
        print(report)
        if args.out:
            with open(args.out, 'w') as f:
                f.write(report)
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def timed_in(cwd: str, cmd: list[str], env: dict):
    saved = os.getcwd()
    os.chdir(cwd)  # llm-foundry's 'allenai/c4' resolves to the local folder from here
    try:
        return timed(cmd, env)
    finally:
        os.chdir(saved)


if __name__ == '__main__':
    sys.exit(main())
