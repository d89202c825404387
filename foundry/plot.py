"""`foundry plot RUN_FOLDER [RUN_FOLDER ...]`: a run's metrics.jsonl as one PNG, runs overlaid.

Four panels against tokens seen (`time/token`): train loss (and eval cross-entropy as points),
tokens/s, learning rate, and evaluation scores (ICL accuracies and gauntlet scores, see
foundry/eval/report.py for the names). A RUN_FOLDER is the folder holding metrics.jsonl (a
run's `run_folder`), or the metrics.jsonl itself.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional

from foundry.config.errors import ConfigError

LOSS = 'loss/train/total'
EVAL_LOSS = 'metrics/eval/LanguageCrossEntropy'
THROUGHPUT = ('throughput/tokens_per_sec', 'throughput/device/tokens_per_sec')


def series(path: str) -> dict[str, list[tuple[float, float]]]:
    """metric name -> [(tokens seen, value)], from a metrics.jsonl."""
    from foundry.loggers.jsonl import read_metrics

    metrics = read_metrics(path)
    out: dict[str, list[tuple[float, float]]] = {}
    tokens = 0.0
    for batch in sorted(metrics):
        line = metrics[batch]
        tokens = float(line.get('time/token', tokens))  # lines without it (eval-only) sit at the last count
        for key, value in line.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((tokens, float(value)))
    return out


def _metrics_path(run: str) -> str:
    path = run if run.endswith('.jsonl') else os.path.join(run, 'metrics.jsonl')
    if not os.path.isfile(path):
        raise ConfigError(f'no metrics.jsonl at {path}; pass a run folder (its run_folder) or the file itself')
    return path


def plot_runs(runs: list[str], out: str, title: Optional[str] = None) -> str:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    (ax_loss, ax_speed), (ax_lr, ax_eval) = axes
    for run in runs:
        path = _metrics_path(run)
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) if len(runs) > 1 else ''
        data = series(path)
        prefix = f'{name}: ' if name else ''
        _line(ax_loss, data.get(LOSS), f'{prefix}train')
        if EVAL_LOSS in data:
            xs, ys = zip(*data[EVAL_LOSS])
            ax_loss.plot(xs, ys, 'o--', label=f'{prefix}eval')
        speed = next((data[k] for k in THROUGHPUT if k in data), None)
        _line(ax_speed, speed, name or None)
        for key in sorted(k for k in data if k.startswith('lr-')):
            _line(ax_lr, data[key], f'{prefix}{key[3:]}')
        scores = sorted(k for k in data if k.startswith('icl/') and (k.endswith('/accuracy') or '/gauntlet/' in k)
                        and k.count('/') <= 3)
        for key in scores:
            xs, ys = zip(*data[key])
            style = 'o-' if '/gauntlet/' in key else '.-'
            ax_eval.plot(xs, ys, style, lw=2.5 if '/gauntlet/' in key else 1, label=f'{prefix}{key[4:]}')
    for ax, label in ((ax_loss, 'loss (cross-entropy)'), (ax_speed, 'tokens/s'), (ax_lr, 'learning rate'),
                      (ax_eval, 'ICL accuracy / gauntlet score')):
        ax.set_xlabel('tokens seen')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2 if ax is ax_eval else 1)
    if not ax_eval.lines:
        ax_eval.text(0.5, 0.5, 'no icl/ metrics in these runs', ha='center', va='center', transform=ax_eval.transAxes)
    fig.suptitle(title or ', '.join(runs))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _line(ax, points, label) -> None:
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, label=label)


def add_plot_parser(sub) -> None:
    parser = sub.add_parser('plot', help='loss, tokens/s, learning rate and eval scores of runs, as one PNG')
    parser.add_argument('runs', nargs='+', help='run folders (holding metrics.jsonl) or metrics.jsonl files')
    parser.add_argument('--out', default=None, help='PNG path (default: RUN/plot.png for one run, ./runs.png for several)')
    parser.add_argument('--title', default=None)
    parser.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    out = args.out
    if out is None:
        out = os.path.join(os.path.dirname(_metrics_path(args.runs[0])), 'plot.png') if len(args.runs) == 1 else 'runs.png'
    print(plot_runs(args.runs, out, args.title))
    return 0
