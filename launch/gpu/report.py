"""The check's output: each line printed and kept in check.log; summary.txt and summary.json at the end."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional


class Report:
    """Prints each line and keeps it in check.log; collects the summary."""

    def __init__(self, out: str):
        self.out = out
        os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
        self._log = open(os.path.join(out, 'check.log'), 'w', encoding='utf-8')
        self.steps: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        self.started = time.time()

    def say(self, text: str) -> None:
        stamp = f'[gpu-check {time.time() - self.started:6.1f}s] '
        for line in text.splitlines() or ['']:
            print(stamp + line, flush=True)
            self._log.write(stamp + line + '\n')
        self._log.flush()

    def step(self, name: str, ok: bool, line: str, **data: Any) -> None:
        self.steps[name] = {'ok': ok, 'line': line, **data}
        self.lines.append(f'{name:<9}: {"" if ok else "FAILED: "}{line}')
        self.say(f'{name}: {"ok" if ok else "FAILED"}: {line}')


class StepFailed(Exception):
    pass


def finish(report: Report, summary: dict[str, Any], failed: Optional[str]) -> int:
    total = time.time() - report.started
    summary['steps'] = report.steps
    summary['passed'] = failed is None
    summary['failed_step'] = failed
    summary['seconds'] = total
    versions = summary.get('versions', {})
    head = ('foundry GPU check' if summary['mode'] == 'gpu' else 'foundry GPU check, CPU smoke mode') + (
        f' - {versions.get("device", "?")}, torch {versions.get("torch", "?")} (CUDA {versions.get("cuda")}), '
        f'transformers {versions.get("transformers", "?")}, Composer {versions.get("mosaicml", "?")}, '
        f'streaming {versions.get("mosaicml-streaming", "?")}, numpy {versions.get("numpy", "?")}, '
        f'Python {versions.get("python", "?")}' if versions else '')
    lines = [head, *report.lines,
             f'result   : {"PASS" if failed is None else f"FAIL ({failed})"} in {total:.0f}s; figures and logs in {report.out}']
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(report.out, 'summary.txt'), 'w') as f:
        f.write(text)
    with open(os.path.join(report.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2, default=str)
    report.say('\n================ summary ================\n' + text.rstrip())
    return 0 if failed is None else 1
