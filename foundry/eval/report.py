"""ICL results as logged metrics, JSON and Markdown.

Metric names (every logger, metrics.jsonl included):

    icl/{label}/{k}-shot/accuracy        (and accuracy_sum for multiple_choice and schema)
    icl/{label}/{k}-shot/skipped         examples whose continuation did not fit (not in the accuracy)
    icl/{label}/{k}-shot/truncated       examples whose context lost tokens on the left
    icl/{label}/{k}-shot/{category}/accuracy   with has_categories
    icl/gauntlet/{category}, icl/gauntlet/{average}
    icl/seconds                          wall time of the whole evaluation
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional


def metrics_for_logger(results: dict, gauntlet: Optional[dict] = None, seconds: Optional[float] = None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for label, by_shot in results.items():
        for shot, result in by_shot.items():
            prefix = f'icl/{label}/{shot}'
            for key in ('accuracy', 'accuracy_sum'):
                if result.get(key) is not None:
                    metrics[f'{prefix}/{key}'] = result[key]
            metrics[f'{prefix}/skipped'] = result['skipped']
            metrics[f'{prefix}/truncated'] = result['truncated']
            for category, sub in (result.get('categories') or {}).items():
                if sub.get('accuracy') is not None:
                    metrics[f'{prefix}/{category}/accuracy'] = sub['accuracy']
    if gauntlet is not None:
        for name, score in {**gauntlet['categories'], **gauntlet['averages']}.items():
            if score is not None:
                metrics[f'icl/gauntlet/{name}'] = score
    if seconds is not None:
        metrics['icl/seconds'] = seconds
    return metrics


def summary_line(results: dict, gauntlet: Optional[dict]) -> str:
    parts = [f'{label}/{shot} {_pct(r.get("accuracy"))}' for label, by_shot in results.items()
             for shot, r in by_shot.items()]
    if gauntlet is not None:
        parts += [f'gauntlet {name} {_num(v)}' for name, v in gauntlet['averages'].items()]
    return ', '.join(parts)


def write_report(report: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """results.json and results.md under out_dir; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, 'results.json')
    md_path = os.path.join(out_dir, 'results.md')
    with open(json_path, 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    with open(md_path, 'w', encoding='utf-8') as f:
        f.write(markdown(report))
    return json_path, md_path


def markdown(report: dict[str, Any]) -> str:
    lines = [f'# foundry eval: {report.get("source", "")}', '']
    meta = {k: report[k] for k in ('device', 'processes', 'batch_size', 'max_seq_len', 'seconds') if k in report}
    if meta:
        lines += [', '.join(f'{k}: {v}' for k, v in meta.items()), '']
    lines += ['| task | type | shots | accuracy | accuracy (summed log-prob) | scored | skipped | truncated | seconds |',
              '|---|---|---|---|---|---|---|---|---|']
    types = report.get('task_types', {})
    for label, by_shot in report['results'].items():
        for shot, r in by_shot.items():
            lines.append(f'| {label} | {types.get(label, "")} | {shot.split("-")[0]} | {_pct(r.get("accuracy"))} | '
                         f'{_pct(r.get("accuracy_sum"))} | {r["scored"]} | {r["skipped"]} | {r["truncated"]} | '
                         f'{r.get("seconds", "")} |')
            for category, sub in (r.get('categories') or {}).items():
                lines.append(f'| {label} / {category} | | {shot.split("-")[0]} | {_pct(sub.get("accuracy"))} | '
                             f'{_pct(sub.get("accuracy_sum"))} | {sub["scored"]} | | | |')
    gauntlet = report.get('gauntlet')
    if gauntlet:
        lines += ['', '## Gauntlet', '', '| category | score |', '|---|---|']
        lines += [f'| {name} | {_num(v)} |' for name, v in gauntlet['categories'].items()]
        lines += [f'| **{name}** | **{_num(v)}** |' for name, v in gauntlet['averages'].items()]
    ppl = report.get('perplexity')
    if ppl:
        lines += ['', '## Held-out perplexity', '', '| data | tokens | cross-entropy | perplexity |', '|---|---|---|---|',
                  f'| {ppl["data"]} | {ppl["tokens"]:,} | {ppl["cross_entropy"]:.4f} | {ppl["perplexity"]:.2f} |']
    return '\n'.join(lines) + '\n'


def _pct(value: Optional[float]) -> str:
    return '' if value is None else f'{100 * value:.1f}%'


def _num(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.4f}'
