"""Size up a loader's data mixture before training: weight, size and epochs of every stream.

``foundry info YAML`` prints this. For each stream (or the single dataset) it reads the
stream's ``index.json`` where it is reachable (a local folder, or ``s3://`` honouring
``S3_ENDPOINT_URL``), counts its samples and tokens (exactly for datasets our converter wrote,
from shard sizes otherwise), derives each stream's share of an epoch exactly as streaming does
(``Stream.apply_weights``), and turns ``max_duration`` x global batch x sequence length into the
number of passes the run makes over each stream: the "epochs" column of the MPT-7B data table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from foundry.data.errors import DataError

__all__ = ['StreamReport', 'MixtureReport', 'describe_mixture', 'format_mixture',
           'run_samples_for']

_DURATION = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(ba|sp|tok|ep)\s*$')


@dataclass
class StreamReport:
    name: str
    where: str
    split: str | None
    weight: str                      # as configured: proportion / repeat / choose / by size
    share: float | None = None       # fraction of each epoch's samples drawn from this stream
    samples: int | None = None       # samples in the stream's dataset
    tokens: int | None = None        # tokens in the stream's dataset
    tokens_exact: bool = False
    epochs: float | None = None      # passes over this stream during the run
    run_tokens: float | None = None  # tokens the run takes from this stream
    error: str | None = None         # why the index could not be read


@dataclass
class MixtureReport:
    label: str
    streams: list[StreamReport]
    run_samples: float | None
    run_tokens: float | None
    epoch_samples: int | None
    notes: list[str] = field(default_factory=list)


def run_samples_for(max_duration: Any, global_batch_size: int, seq_len: int,
                    epoch_samples: int | None) -> float | None:
    """Samples a run consumes: ``max_duration`` in ba, sp, tok or ep (an int means epochs)."""
    if max_duration is None:
        return None
    if isinstance(max_duration, int):
        max_duration = f'{max_duration}ep'
    match = _DURATION.match(str(max_duration))
    if not match:
        return None
    value, unit = float(match.group(1)), match.group(2)
    if unit == 'ba':
        return value * global_batch_size
    if unit == 'sp':
        return value
    if unit == 'tok':
        return value / seq_len
    return value * epoch_samples if epoch_samples else None


def _stream_entries(dataset: Mapping[str, Any]) -> list[tuple[str, dict]]:
    streams = dataset.get('streams')
    if streams:
        return [(str(name), dict(cfg or {})) for name, cfg in streams.items()]
    cfg = {k: dataset.get(k) for k in ('remote', 'local', 'split')}
    return [('(dataset)', cfg)]


def _weight(cfg: Mapping[str, Any]) -> str:
    for key in ('proportion', 'repeat', 'choose'):
        if cfg.get(key) is not None:
            return f'{key} {cfg[key]:g}' if isinstance(cfg[key], float) else f'{key} {cfg[key]}'
    return 'by size'


def _locate(cfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> tuple[str | None, str | None]:
    remote = cfg.get('remote') or (None if dataset.get('streams') else dataset.get('remote'))
    local = cfg.get('local')
    split = cfg.get('split') if cfg.get('split') is not None else dataset.get('split')
    return (remote or local), split


def describe_mixture(label: str, loader: Mapping[str, Any], *, max_duration: Any,
                     global_batch_size: int, seq_len: int) -> MixtureReport:
    """Weights, sizes and run epochs of every stream of one loader section."""
    from foundry.data.stream.cache_dir import is_remote
    from foundry.data.stream.mds_index import dataset_stats

    dataset = dict(loader.get('dataset') or {})
    entries = _stream_entries(dataset)
    reports = []
    for name, cfg in entries:
        where, split = _locate(cfg, dataset)
        report = StreamReport(name=name, where=str(where), split=split, weight=_weight(cfg))
        if where is None:
            report.error = 'no remote or local set'
        elif is_remote(where) and not where.startswith('s3://'):
            report.error = 'index not read (only local folders and s3:// are read)'
        else:
            if where.startswith('file://'):
                where = where[len('file://'):]
            try:
                stats = dataset_stats(where, split, dataset.get('token_encoding_type'))
                report.samples, report.tokens = stats.samples, stats.tokens
                report.tokens_exact = stats.exact
            except DataError as err:
                report.error = _short_reason(str(err))
        reports.append(report)

    notes: list[str] = []
    epoch_samples = _apply_weights(entries, reports, dataset, notes)
    run_samples = run_samples_for(max_duration, global_batch_size, seq_len, epoch_samples)
    run_tokens = run_samples * seq_len if run_samples is not None else None
    if run_samples is not None:
        for report in reports:
            if report.share is None:
                continue
            drawn = run_samples * report.share
            if report.samples:
                report.epochs = drawn / report.samples
                if report.tokens is not None:
                    report.run_tokens = report.epochs * report.tokens
    return MixtureReport(label, reports, run_samples, run_tokens, epoch_samples, notes)


def _apply_weights(entries, reports: list[StreamReport], dataset: Mapping[str, Any],
                   notes: list[str]) -> int | None:
    """Each stream's share of an epoch, with streaming's own rules; returns the epoch size."""
    import numpy as np
    from streaming import Stream

    cfgs = [cfg for _, cfg in entries]
    proportions = [cfg.get('proportion') for cfg in cfgs]
    if any(p is not None for p in proportions):
        if not all(p is not None for p in proportions):
            notes.append('streaming requires proportion on every stream or on none')
            return None
        total = float(sum(proportions))
        for report, p in zip(reports, proportions):
            report.share = p / total
        sizes = [r.samples for r in reports]
        if dataset.get('epoch_size') is not None:
            return int(dataset['epoch_size'])
        return int(sum(sizes)) if all(s is not None for s in sizes) else None
    sizes = [r.samples for r in reports]
    if not all(s is not None for s in sizes):
        notes.append('shares need every stream\'s size (repeat/choose/by-size weighting)')
        return None
    streams = []
    for cfg in cfgs:
        kwargs = {k: cfg[k] for k in ('repeat', 'choose') if cfg.get(k) is not None}
        streams.append(Stream(local='/nonexistent/foundry-info', **kwargs))
    try:
        epoch = Stream.apply_weights(streams, np.array(sizes, np.int64),
                                     dataset.get('epoch_size'), int(dataset.get('shuffle_seed')
                                                                    or 9176))
    except ValueError as err:
        notes.append(str(err))
        return None
    for report, stream in zip(reports, streams):
        report.share = float(stream.proportion)
    return int(epoch)


def _short_reason(message: str) -> str:
    """Why an index could not be read, without repeating the stream's location."""
    if message.startswith('no MDS index at'):
        return 'no index.json there'
    message = re.sub(r'^S3 request for \S+ failed: ', '', message)
    message = re.sub(r" \(bucket '[^']*', key '[^']*'(, endpoint [^)]*)?\)", '', message)
    message = message.split('. ')[0]
    return message if len(message) <= 120 else message[:117] + '...'


def _count(n: float | None, exact: bool = True) -> str:
    if n is None:
        return '?'
    for unit, size in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{"" if exact else "~"}{n / size:.2f}{unit}'
    return f'{"" if exact else "~"}{n:,.0f}'


def format_mixture(report: MixtureReport, global_batch_size: int, seq_len: int,
                   max_duration: Any) -> str:
    lines = []
    if report.run_samples is not None:
        run = (f'{max_duration} = {_count(report.run_samples)} samples x {seq_len} = '
               f'{_count(report.run_tokens)} tokens')
    elif max_duration is None:
        run = 'none (evaluated, not trained on)'
    else:
        run = f'{max_duration} (length unknown until every stream is sized)'
    lines.append(f'{report.label} mixture: {len(report.streams)} stream(s); run: {run} '
                 f'(global batch {global_batch_size})')
    header = ('stream', 'weight', 'share', 'tokens', 'samples', 'epochs', 'run tokens', 'where')
    rows = []
    for s in report.streams:
        share = f'{100 * s.share:.1f}%' if s.share is not None else '?'
        epochs = f'{s.epochs:.2f}' if s.epochs is not None else '?'
        where = s.where + (f' [{s.split}]' if s.split else '')
        if s.error:
            where += f'  ({s.error})'
        rows.append((s.name, s.weight, share, _count(s.tokens, s.tokens_exact),
                     _count(s.samples), epochs, _count(s.run_tokens, s.tokens_exact), where))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [f'{row[0]:<{widths[0]}}', f'{row[1]:<{widths[1]}}'] + \
                [f'{row[i]:>{widths[i]}}' for i in range(2, len(row) - 1)] + [row[-1]]
        lines.append('  ' + '  '.join(cells))
    if report.epoch_samples is not None:
        lines.append(f'  one epoch of the mixture = {report.epoch_samples:,} samples; "~" marks '
                     'token counts estimated from shard sizes')
    lines.extend(f'  note: {n}' for n in report.notes)
    return '\n'.join(lines)
