"""(d) resume: the same run SIGKILLed inside a checkpoint save and restarted, compared with an uninterrupted one."""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any

from profiles import ModelRun, Profile
from report import Report, StepFailed
from runs import Launch, deterministic_env, eval_loss, losses, read_metrics, run_overrides, token_sums


def resume_check(report: Report, profile: Profile, run: ModelRun, data: dict[str, Any], composer: str,
                 env: dict[str, str], work: str, deadline: float, reference: dict[str, Any]) -> dict[str, Any]:
    interval = profile.save_interval
    hang_at = 2 * interval
    run_folder = os.path.join(report.out, 'runs', f'{run.name}-resume')
    save_folder = os.path.join(work, 'checkpoints', f'{run.name}-resume')
    shutil.rmtree(run_folder, ignore_errors=True)
    overrides = run_overrides(profile, run, data, run_folder, save_folder, f'check-{run.name}-resume', evaluate=True)
    log = os.path.join(report.out, 'logs', f'{run.name}-resume.log')
    env = {**env, **deterministic_env(profile)}
    metrics_path = os.path.join(run_folder, 'metrics.jsonl')
    marker = os.path.join(work, 'hanging-in-save')
    if os.path.exists(marker):
        os.remove(marker)

    # 1. Killed: rank 0 hangs inside the save at batch 2*interval (every .distcp written, no .metadata yet).
    report.say(f'resume: the same mpt-125m command, SIGKILLed inside its batch-{hang_at} checkpoint save')
    first = Launch(composer, run.yaml, overrides, log,
                   {**env, 'FOUNDRY_FAULT': f'hang_in_save:{hang_at}', 'FOUNDRY_FAULT_MARKER': marker})
    limit = min(profile.run_timeout_s, deadline - time.time())
    while not os.path.exists(marker):
        if first.proc.poll() is not None:
            raise StepFailed(f'resume: the run exited ({first.proc.returncode}) before its batch-{hang_at} save; '
                             f'log tail:\n{first.tail()}')
        if first.seconds > limit:
            first.kill()
            raise StepFailed(f'resume: no hang in the batch-{hang_at} save after {limit:.0f}s')
        time.sleep(0.05)
    time.sleep(0.5)  # let the hang settle: the save's data files are all on disk
    first.kill()
    killed_seconds = first.seconds
    before_kill = losses(read_metrics(metrics_path))
    partial = os.path.join(save_folder, f'ep0-ba{hang_at}')
    partial_files = sorted(os.listdir(partial)) if os.path.isdir(partial) else []
    logged = f'batches 0-{max(before_kill)}' if before_kill else 'no batch yet (metrics lines are written in groups)'
    report.say(f'resume: killed after {killed_seconds:.0f}s with {logged} in metrics.jsonl; {partial}: '
               f'{partial_files} (no .metadata)')
    if '.metadata' in partial_files:
        raise StepFailed(f'resume: {partial} has .metadata although its save hung')

    # 2. The same command again (no fault), to the end.
    second = Launch(composer, run.yaml, overrides, log, env)
    rc = second.wait(min(profile.run_timeout_s, deadline - time.time()))
    if rc != 0:
        raise StepFailed(f'resume: the restarted run exited with {rc}; log tail:\n{second.tail()}')
    text = second.tail(10**9)  # the restarted run's part of the log
    match = re.search(r'autoresume: on; resuming from (\S+) \(batch (\d+)\)', text)
    if not match:
        raise StepFailed('resume: the restarted run did not log "autoresume: on; resuming from ..."; log tail:\n'
                         + second.tail())
    resumed_from, start = match.group(1), int(match.group(2))
    metrics = read_metrics(metrics_path)
    after = {b: v for b, v in losses(metrics).items() if b >= start}
    ref = reference['losses']
    ref_sums, sums = reference['token_sums'], token_sums(metrics)
    expected = list(range(start, run.batches))
    problems = []
    if start != interval:
        problems.append(f'resumed at batch {start}, expected {interval} (the newest whole checkpoint)')
    if sorted(after) != expected:
        problems.append(f'resumed run logged batches {sorted(after)}, expected {expected[0]}-{expected[-1]}')
    if f'ep0-ba{hang_at} is incomplete' not in text:
        problems.append(f'no "ep0-ba{hang_at} is incomplete" line in the restarted run\'s log')
    data_equal = all(sums.get(b) is not None and sums.get(b) == ref_sums.get(b) for b in expected)
    if not data_equal:
        problems.append('data/token_sum differs from the uninterrupted run: not the same samples')
    evals = (reference['eval_loss'], eval_loss(metrics))
    diffs = {b: abs(after[b] - ref[b]) for b in expected if b in after and b in ref}
    pre = {b: abs(before_kill[b] - ref[b]) for b in before_kill if b in ref}
    exact = bool(diffs) and all(d == 0.0 for d in diffs.values())
    # CPU: bit-identical or fail. GPU: bit-identical is expected (same kernels, same autotuned configs from the
    # inductor cache, CUBLAS_WORKSPACE_CONFIG set); if the GPU is not deterministic across processes (pre-kill
    # batches, which involve no resume, differ too) up to 1e-3 per batch is accepted: at the warm-up learning
    # rates of 40 batches, run-to-run rounding noise stays far below it, while a resume that lost the data
    # position (checked exactly above), optimizer moments or scheduler step shifts a loss by more.
    tolerance = 0.0 if profile.device == 'cpu' else 1e-3
    worst = max(diffs.values()) if diffs else float('inf')
    if worst > tolerance:
        problems.append(f'max |loss difference| {worst:.3g} > {tolerance:g}')
    if None in evals or abs(evals[0] - evals[1]) > tolerance:
        problems.append(f'eval loss at the end {evals[1]} vs {evals[0]} uninterrupted')

    lines = [f'per-batch loss: uninterrupted ({reference["overrides_note"]}) vs killed in the batch-{hang_at} save '
             f'and resumed from {resumed_from}',
             f'{"batch":>5}  {"uninterrupted":>18}  {"killed+resumed":>18}  {"|diff|":>10}  phase']
    for b in range(run.batches):
        got = after.get(b, before_kill.get(b))
        phase = 'resumed' if b in after else ('before kill' if b in before_kill else '')
        d = abs(got - ref[b]) if got is not None and b in ref else None
        lines.append(f'{b:>5}  {ref.get(b, float("nan")):>18.10f}  '
                     f'{(got if got is not None else float("nan")):>18.10f}  '
                     f'{(f"{d:.3g}" if d is not None else "-"):>10}  {phase}')
    with open(os.path.join(report.out, 'resume_losses.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    result = {
        'killed_in_save_of_batch': hang_at, 'killed_after_s': killed_seconds, 'resumed_from': resumed_from,
        'resumed_at_batch': start, 'batches_compared': len(diffs), 'exact': exact, 'max_abs_diff': worst,
        'tolerance': tolerance, 'pre_kill_max_abs_diff': max(pre.values()) if pre else None,
        'pre_kill_exact': bool(pre) and all(d == 0.0 for d in pre.values()), 'data_equal': data_equal,
        'eval_loss': evals[1], 'eval_loss_uninterrupted': evals[0], 'eval_exact': evals[0] == evals[1],
        'problems': problems, 'checkpoint': os.path.join(save_folder, 'latest-rank0.pt'),
        'restart_seconds': second.seconds,
    }
    return result


def describe_resume(run: ModelRun, r: dict[str, Any]) -> str:
    pre = ('exact' if r['pre_kill_exact'] else 'not logged' if r['pre_kill_max_abs_diff'] is None
           else f'max {r["pre_kill_max_abs_diff"]:.3g}')
    how = ('bit-identical' if r['exact'] else
           f'within {r["tolerance"]:g} (max |diff| {r["max_abs_diff"]:.3g}; before the kill: {pre})')
    return (f'SIGKILLed inside the batch-{r["killed_in_save_of_batch"]} save, resumed from '
            f'{os.path.basename(r["resumed_from"])}: losses of batches {r["resumed_at_batch"]}-{run.batches - 1} '
            f'{how} to the uninterrupted run ({r["batches_compared"]} batches), same data (token sums), eval loss '
            f'{"equal" if r["eval_exact"] else "within tolerance"} ({r["eval_loss"]:.6f})')
