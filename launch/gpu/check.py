"""The real training path on one GPU, start to finish: `bash launch/gpu/check.sh` (see check.sh).

On a machine with one CUDA GPU, Python 3.12, torch and transformers preinstalled and no internet:

  (a) install  the wheelhouse (`make gpu-wheels` -> .whl/gpu) with `pip install --no-index --no-deps
               --target .gpu-site`, skipping every distribution the machine already has (its torch,
               transformers, numpy are never replaced), then import Composer, streaming and foundry;
  (b) data     build a real MDS dataset here (foundry.data.prep.demo_corpus: English docstrings and Python
               code of this Python's standard library, its own byte-level BPE, samples of 2048 tokens),
               then validate every run's command line with foundry's load_config before any launch;
  (c) speed    `composer -n 1 launch/train.py yamls/pretrain/mpt-125m.yaml ...` and then mpt-1b.yaml,
               overrides only: amp_bf16, FSDP2, attn_impl flex, compile_config {} (torch.compile of
               every block), the local MDS streams and tokenizer, gpu_bench.py's batches (16 and 8) and
               30-40 batches, no checkpoints or evaluation; tokens/s and MFU are the median of the
               5-batch rates after 10 warm-up batches in each run's metrics.jsonl (throughput_monitor);
  (d) resume   mpt-125m uninterrupted with sharded checkpoints every 10 batches and evaluation at the
               end; then the same command SIGKILLed while rank 0 is inside its batch-20 save (data
               written, no .metadata), and the same command again: it must resume from batch 10 and give
               the uninterrupted run's per-batch losses, data (token sums) and eval loss; bit-identical
               is expected, 1e-3 is tolerated on a GPU (see resume.py);
  (e) export   `foundry export hf` of the resumed run's last checkpoint, loaded with transformers'
               AutoModelForCausalLM on the GPU; its logits against foundry's model read straight from the
               checkpoint (fp32), max |difference| printed and bounded; a short greedy generation.

Figures and logs go to --out (default $OUT, else ./gpu_check_out): summary.txt, summary.json, check.log,
logs/<run>.log, runs/<run>/metrics.jsonl, resume_losses.txt, export.json. Data, checkpoints and the
exported folder (gigabytes) go to --work (default /tmp/foundry-gpu-check), replaced at each start.

`--cpu-smoke` runs every step on a CPU with tiny model overrides (d_model 64, 2 layers, seq 128, a
512-token BPE) and a few batches (8 for mpt-125m, checkpoints every 2, killed in the batch-4 save):
torch.compile is off there (compiling on a 2-core machine costs more than the whole smoke run;
--cpu-compile turns it on), flex trains through its SDPA fallback on CPU, amp_bf16 is foundry's CPU
autocast, and the uninterrupted mpt-125m run is the speed run itself (one launch fewer); losses must be
bit-identical. The install step runs only when --wheelhouse is given. tests/e2e/test_gpu_check.py runs it.

Exit status 0 when every step passed, 1 otherwise; summary.txt says which step failed and why.

This file is the command line and the order of the steps; each step is a module beside it: install.py (a),
prepare_data.py (b), runs.py (c: launches, metrics, speed figures), resume.py (d), export_check.py (e);
profiles.py holds what each mode runs, report.py the output and summary.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from typing import Any, Optional

# Run as a script (check.sh does), so launch/gpu/ is on sys.path and its modules import by their plain names.
import runs
from export_check import describe_export, export_check
from install import check_imports, describe_install, install_wheelhouse
from prepare_data import describe_data, prepare
from profiles import REPO, cpu_profile, gpu_profile
from report import Report, StepFailed, finish
from resume import describe_resume, resume_check
from runs import Launch, composer_command, describe_reference, describe_speed, train_run

DEFAULT_WHEELHOUSE = os.path.join(REPO, '.whl', 'gpu')
DEFAULT_SITE = os.path.join(REPO, '.gpu-site')
DEFAULT_WORK = os.path.join('/tmp', 'foundry-gpu-check')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.environ.get('OUT') or os.path.join(os.getcwd(), 'gpu_check_out'),
                        help='figures and logs (default: $OUT, else ./gpu_check_out)')
    parser.add_argument('--work', default=DEFAULT_WORK,
                        help=f'data, checkpoints, the exported folder; replaced at start (default {DEFAULT_WORK})')
    parser.add_argument('--cpu-smoke', action='store_true', help='every step on a CPU, tiny model, a few batches')
    parser.add_argument('--cpu-compile', action='store_true', help='with --cpu-smoke: torch.compile on (slow on 2 cores)')
    parser.add_argument('--wheelhouse', default=None,
                        help=f'wheels to install (default on a GPU: {DEFAULT_WHEELHOUSE}; --cpu-smoke: none)')
    parser.add_argument('--site', default=DEFAULT_SITE, help='where missing wheels are installed (pip --target)')
    parser.add_argument('--no-install', action='store_true', help='use the packages already importable')
    parser.add_argument('--models', default=None, help='comma-separated subset, e.g. mpt-125m')
    parser.add_argument('--budget', type=float, default=None, help='seconds for the whole check (GPU default 470)')
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    profile = cpu_profile(args.cpu_compile) if args.cpu_smoke else gpu_profile()
    if args.models:
        wanted = [m.strip() for m in args.models.split(',')]
        profile.models = [m for m in profile.models if m.name in wanted]
        if not profile.models or profile.models[0].name != 'mpt-125m':
            parser.error('--models must include mpt-125m (the reference run of the resume and export steps)')
    budget = args.budget or profile.budget_s
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work)
    os.makedirs(out, exist_ok=True)
    report = Report(out)
    deadline = report.started + budget
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    report.say(f'foundry GPU check ({"CPU smoke" if args.cpu_smoke else "GPU"}): out {out}, work {work}, '
               f'budget {budget:.0f}s, python {sys.executable}')

    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    for name in ('FOUNDRY_FAULT', 'FOUNDRY_FAULT_MARKER', 'FOUNDRY_DATA_FINGERPRINT'):
        env.pop(name, None)
    summary: dict[str, Any] = {'mode': 'cpu-smoke' if args.cpu_smoke else 'gpu', 'out': out, 'work': work}
    failed = None
    ctx: dict[str, Any] = {}

    def step(name: str, fn, describe) -> bool:
        nonlocal failed
        if failed is not None:
            report.step(name, False, f'skipped (after {failed} failed)')
            return False
        if time.time() > deadline:
            failed = name
            report.step(name, False, f'skipped: the {budget:.0f}s budget is spent')
            return False
        started = time.time()
        try:
            result = fn()
        except StepFailed as e:
            failed = name
            summary[name] = {'error': str(e), 'seconds': time.time() - started}
            report.step(name, False, str(e).splitlines()[0], seconds=time.time() - started)
            report.say(str(e))
            return False
        except Exception as e:  # a bug in this script or an unexpected library error: still write the summary
            failed = name
            import traceback

            summary[name] = {'error': traceback.format_exc(), 'seconds': time.time() - started}
            report.step(name, False, f'{type(e).__name__}: {e}', seconds=time.time() - started)
            report.say(traceback.format_exc())
            return False
        result = result or {}
        result.setdefault('seconds', time.time() - started)
        summary[name] = result
        ctx[name] = result
        report.step(name, True, describe(result) + f'  ({time.time() - started:.1f}s)')
        return True

    # (a) install
    wheelhouse = args.wheelhouse or (None if args.cpu_smoke else DEFAULT_WHEELHOUSE)
    site = None
    if wheelhouse and not args.no_install:
        site = os.path.abspath(args.site)

        def do_install():
            result = install_wheelhouse(report, os.path.abspath(wheelhouse), site)
            if result['stale_foundry_files']:
                report.say(f'WARNING: the foundry wheel differs from the working tree in '
                           f'{len(result["stale_foundry_files"])} files ({", ".join(result["stale_foundry_files"][:5])}'
                           f'...): rerun `make gpu-wheels` and carry .whl/gpu again')
            return result

        if not step('install', do_install, describe_install):
            return finish(report, summary, failed)
        env['PYTHONPATH'] = site + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
        env['PATH'] = os.path.join(site, 'bin') + os.pathsep + env.get('PATH', '')
        sys.path.insert(0, site)

    if not step('imports', lambda: check_imports(env, site, profile.device),
                lambda r: ', '.join(f'{k} {v}' for k, v in r['versions'].items())):
        return finish(report, summary, failed)
    summary['versions'] = ctx['imports']['versions']
    runs.DEVICE_NAME = summary['versions'].get('device') or ''  # describe_speed's H200 comparison

    # (b) data
    data_root = os.path.join(work, 'data')

    step('data', lambda: prepare(report, profile, data_root, work, env),
         lambda r: describe_data(profile, data_root, r))

    def do_configs():
        result = ctx['data']['configs']
        if 'error' in result:
            raise StepFailed(result['error'])
        return result

    step('configs', do_configs, lambda r: (f'{len(r["validated"])} command lines validated by foundry\'s load_config: '
                                          + ', '.join(r['validated'])))
    composer = None
    if failed is None:
        try:
            composer = composer_command(site)
        except StepFailed as e:
            report.step('launcher', False, str(e))
            failed = 'launcher'

    # (c) speed runs (on the CPU the first is also the uninterrupted reference of the resume step)
    first = profile.models[0]
    for i, run in enumerate(profile.models):
        def do_speed(run=run, reference=(i == 0 and not profile.separate_reference)):
            result = train_run(report, profile, run, ctx['data'], composer, env, work, deadline, run.name, reference)
            result['overrides_note'] = f'the {run.name} speed run'
            return result

        step(run.name, do_speed, lambda r, run=run: describe_speed(run.name, run, profile, r))

    # (d) resume: an uninterrupted run with checkpoints, then the same command killed and restarted
    reference_key = first.name
    if profile.separate_reference:
        reference_key = 'reference'

        def do_reference():
            result = train_run(report, profile, first, ctx['data'], composer, env, work, deadline,
                               f'{first.name}-uninterrupted', reference=True)
            result['overrides_note'] = f'{first.name}-uninterrupted'
            return result

        step('reference', do_reference, lambda r: describe_reference(first, profile, r))

    def do_resume():
        if reference_key not in ctx:
            raise StepFailed(f'no uninterrupted {first.name} run to compare with')
        result = resume_check(report, profile, first, ctx['data'], composer, env, work, deadline, ctx[reference_key])
        if result['problems']:
            raise StepFailed('resume: ' + '; '.join(result['problems'])
                             + f' (per-batch table: {os.path.join(out, "resume_losses.txt")})')
        return result

    step('resume', do_resume, lambda r: describe_resume(first, r))

    # (e) export
    def do_export():
        checkpoint = ctx['resume']['checkpoint']
        result = export_check(report, profile, checkpoint, ctx['data'], env, site, work, deadline)
        if not result['max_abs_diff'] <= profile.logits_bound:
            raise StepFailed(f'export: max |logit difference| transformers vs foundry {result["max_abs_diff"]:.3g} > '
                             f'{profile.logits_bound:g}')
        return result

    step('export', do_export, describe_export)
    return finish(report, summary, failed)


def _main() -> int:
    # Ctrl-C or SIGTERM: the training runs are in process groups of their own, so take them down too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return main()
    finally:
        Launch.kill_all()


if __name__ == '__main__':
    sys.exit(_main())
