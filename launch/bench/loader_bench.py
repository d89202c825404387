"""Train-loader throughput alone: tokens/s each rank receives, from local disk and from S3.

    python launch/bench/loader_bench.py [--ranks 2] [--workers 0,2] [--batches 60]

Builds an MDS dataset of 2048-token GPT-NeoX samples (from the convert benchmark's corpus, or
the demo corpus when that is absent), writes it to a local folder and, with the converter, to a
moto S3 server this script starts on loopback. Then, for each source and DataLoader worker
count, it starts --ranks processes (torch.distributed on gloo, as the composer launcher would on
one node), builds the real train loader (build_text_dataloader: StreamingTextDataset with a
private cache for the remote, shuffling, the collator with sequence_id) and times --batches
batches per rank after the first. It prints tokens/s per rank, the first-batch latency (which
for S3 includes downloading the first shards) and the machine load.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
BENCH = os.path.join(REPO, '.bench')
NEOX = '/work/shared/tokenizers/gpt-neox-20b/tokenizer.json'
SEQ = 2048
BATCH = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f'http://127.0.0.1:{port}'
    server = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p',
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            return server, url
        except Exception:
            if time.time() > deadline:
                server.kill()
                raise SystemExit('[loader-bench] moto server did not start')
            time.sleep(0.2)


def build_data(work: str, megabytes: float) -> tuple[str, str, int]:
    """(local folder, s3 URL, samples): the same dataset in both places."""
    from foundry.data.prep.convert import convert
    from foundry.data.prep.sources import JsonSource
    from foundry.data.tokenizer import build_tokenizer

    corpus = os.path.join(BENCH, 'corpus-40MB.jsonl')
    if not os.path.isfile(corpus):
        sys.path.insert(0, os.path.join(REPO, 'launch', 'bench'))
        from convert_bench import make_corpus
        os.makedirs(BENCH, exist_ok=True)
        make_corpus(corpus, 40)
    part = os.path.join(work, 'input.jsonl')
    with open(corpus, 'rb') as src, open(part, 'wb') as dst:
        remaining = int(megabytes * 1e6)
        for line in src:
            if remaining <= 0:
                break
            dst.write(line)
            remaining -= len(line)
    tokenizer = build_tokenizer(NEOX)
    local = os.path.join(work, 'local')
    summary = convert(JsonSource(part), local, tokenizer, SEQ, size_limit=1 << 22, verbose=False,
                      progress=False)
    import boto3
    boto3.client('s3', endpoint_url=os.environ['S3_ENDPOINT_URL']).create_bucket(Bucket='bench')
    convert(JsonSource(part), 's3://bench/loader', tokenizer, SEQ, size_limit=1 << 22,
            verbose=False, progress=False)
    return local, 's3://bench/loader', summary.samples


def rank_main(rank: int, world: int, port: int, source: str, workers: int, batches: int,
              out: str) -> None:
    os.environ.update({'RANK': str(rank), 'WORLD_SIZE': str(world), 'LOCAL_RANK': str(rank),
                       'LOCAL_WORLD_SIZE': str(world), 'NODE_RANK': '0',
                       'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)})
    import multiprocessing

    import torch.distributed as dist

    from foundry.data.stream.text_loader import build_text_dataloader

    # Ranks here are spawned, which would make DataLoader workers spawn too (seconds of torch
    # imports each); the composer launcher starts ranks as fresh programs, whose workers fork.
    multiprocessing.set_start_method('fork', force=True)
    from foundry.data.tokenizer import build_tokenizer

    dist.init_process_group('gloo', rank=rank, world_size=world)
    tokenizer = build_tokenizer(NEOX)
    key = 'local' if not source.startswith('s3://') else 'remote'
    cfg = {'name': 'text', 'num_workers': workers, 'drop_last': True, 'dataset': {
        key: source, 'max_seq_len': SEQ, 'shuffle': True, 'shuffle_seed': 1}}
    start = time.perf_counter()
    loader = build_text_dataloader(cfg, tokenizer, BATCH).dataloader
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    tokens, n = 0, 0
    t0 = time.perf_counter()
    for batch in it:
        tokens += int(batch['attention_mask'].sum())
        n += 1
        if n >= batches:
            break
    seconds = time.perf_counter() - t0
    with open(out, 'w') as f:
        json.dump({'rank': rank, 'tokens': tokens, 'batches': n, 'seconds': seconds,
                   'first_batch_s': first}, f)
    dist.barrier()
    dist.destroy_process_group()


def measure(source: str, ranks: int, workers: int, batches: int, work: str) -> list[dict]:
    import torch.multiprocessing as mp

    port = free_port()
    outs = [os.path.join(work, f'r{r}-{time.time_ns()}.json') for r in range(ranks)]
    context = mp.start_processes(_entry, args=(ranks, port, source, workers, batches, outs),
                                 nprocs=ranks, join=True, start_method='spawn')
    del context
    return [json.load(open(o)) for o in outs]


def _entry(rank, ranks, port, source, workers, batches, outs):
    rank_main(rank, ranks, port, source, workers, batches, outs[rank])


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f'{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--ranks', type=int, default=2)
    parser.add_argument('--workers', default='0,2', help='DataLoader workers to try, e.g. 0,2')
    parser.add_argument('--batches', type=int, default=60, help='timed batches per rank')
    parser.add_argument('--mb', type=float, default=24.0, help='input text for the dataset (MB)')
    parser.add_argument('--repeat', type=int, default=3,
                        help='measurements per configuration, interleaved; the median counts')
    args = parser.parse_args()
    if not os.path.isfile(NEOX):
        raise SystemExit(f'[loader-bench] the GPT-NeoX tokenizer is missing at {NEOX}')
    server, endpoint = start_moto()
    os.environ.update({'S3_ENDPOINT_URL': endpoint, 'AWS_ACCESS_KEY_ID': 'bench',
                       'AWS_SECRET_ACCESS_KEY': 'bench', 'AWS_DEFAULT_REGION': 'us-east-1'})
    work = tempfile.mkdtemp(prefix='loader-bench-')
    os.environ['FOUNDRY_DATA_CACHE'] = os.path.join(work, 'cache')
    try:
        local, remote, samples = build_data(work, args.mb)
        per_rank = samples // args.ranks // BATCH - 1
        batches = min(args.batches, per_rank)
        print(f'[loader-bench] dataset: {samples:,} samples x {SEQ} tokens; {batches} timed '
              f'batches of {BATCH} per rank; load {load()}', flush=True)
        configs = [(name, source, int(w)) for name, source in
                   (('local disk', local), ('S3 (moto, loopback)', remote))
                   for w in args.workers.split(',')]
        samples_of: dict[tuple, list] = {c[::2]: [] for c in configs}
        for round_ in range(args.repeat):  # round-robin, so load changes hit all alike
            for source_name, source, workers in configs:
                results = measure(source, args.ranks, workers, batches, work)
                rate = [r['tokens'] / r['seconds'] for r in results]
                first = max(r['first_batch_s'] for r in results)
                samples_of[(source_name, workers)].append((rate, first))
                print(f'[loader-bench] round {round_ + 1}: {source_name}, {workers} workers: '
                      + ', '.join(f'rank {i} {x:,.0f} tok/s' for i, x in enumerate(rate))
                      + f'; first batch after {first:.2f}s (load {load()})', flush=True)
        rows = []
        for (source_name, workers), runs in samples_of.items():
            ranks = list(zip(*(rate for rate, _ in runs)))
            median = [sorted(r)[len(r) // 2] for r in ranks]
            first = sorted(f for _, f in runs)[len(runs) // 2]
            rows.append((source_name, workers, median, first))
        print(f'\n=== train loader alone: {args.ranks} ranks on this machine, batch {BATCH} x '
              f'{SEQ}, shuffle on; load average {load()} ===')
        print(f'  {"source":<22} {"workers":>7} {"tokens/s per rank (mean)":>26} '
              f'{"min rank":>12} {"first batch":>12}   (medians of {args.repeat} runs)')
        for source_name, workers, rate, first in rows:
            print(f'  {source_name:<22} {workers:>7} {sum(rate) / len(rate):>26,.0f} '
                  f'{min(rate):>12,.0f} {first:>11.2f}s')
    finally:
        server.terminate()
        server.wait()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
