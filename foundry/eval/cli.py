"""`foundry eval SRC TASKS.yaml`: ICL tasks, the gauntlet and held-out perplexity, standalone.

SRC is a Hugging Face folder (config.json + weights, e.g. from `foundry export hf`) or a Composer
checkpoint (a sharded folder, a full .pt, or latest-rank0.pt; local or s3://) whose run wrote
hf_meta/ beside it. TASKS.yaml holds `icl_tasks:` (a list, or a path to a file listing them) and
optionally `eval_gauntlet:`, as llm-foundry's eval YAMLs do.

On several processes (`--nproc N`, or launched by composer/torchrun), every process holds the
whole model and scores its share of the examples; rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Optional

from foundry.config.errors import ConfigError


def add_eval_parser(sub) -> None:
    parser = sub.add_parser('eval', help='ICL tasks, the gauntlet and held-out perplexity of a checkpoint or HF folder')
    add_arguments(parser)
    parser.set_defaults(func=cmd_eval)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('src', help='Hugging Face folder, or Composer checkpoint (sharded folder, .pt, latest-rank0.pt)')
    parser.add_argument('tasks', help='YAML with icl_tasks: (and optionally eval_gauntlet:)')
    parser.add_argument('--gauntlet', default=None, help='YAML with eval_gauntlet: (overrides the tasks file\'s)')
    parser.add_argument('--out', default='eval_results', help='folder for results.json and results.md')
    parser.add_argument('--batch-size', type=int, default=16, help='examples per batch (a task\'s batch_size wins)')
    parser.add_argument('--max-seq-len', type=int, default=None, help='default: the model\'s max_seq_len')
    parser.add_argument('--eval-data', action='append', default=[], metavar='MDS_DIR',
                        help='held-out MDS data for perplexity (repeatable); local folder or s3://')
    parser.add_argument('--eval-split', default=None, help='split folder inside each --eval-data (e.g. val)')
    parser.add_argument('--eval-batches', type=int, default=-1, help='perplexity over at most this many batches')
    parser.add_argument('--device', choices=['cpu', 'gpu'], default=None, help='default: gpu when CUDA is available')
    parser.add_argument('--precision', choices=['fp32', 'bf16'], default=None, help='default: bf16 on GPU, fp32 on CPU')
    parser.add_argument('--meta', default=None, help='config + tokenizer folder for a checkpoint (default: its hf_meta)')
    parser.add_argument('--nproc', type=int, default=1, help='processes on this machine (through composer\'s launcher)')
    parser.add_argument('--no-share-context', action='store_true',
                        help='multiple_choice: one full pass per choice instead of one context pass per question')
    parser.add_argument('--examples', action='store_true', help='also write every example\'s judgment (results.json)')


def cmd_eval(args: argparse.Namespace) -> int:
    if args.nproc > 1 and int(os.environ.get('WORLD_SIZE', '1')) == 1:
        return _relaunch(args)
    return run_eval(args)


def _relaunch(args: argparse.Namespace) -> int:
    composer = shutil.which('composer') or os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', str(args.nproc), '-m', 'foundry.eval.cli', *_argv_from(args)]
    return subprocess.run(cmd).returncode


def _argv_from(args: argparse.Namespace) -> list[str]:
    """The command line each launched process gets: the same options, without --nproc."""
    argv = [args.src, args.tasks]
    for name, value in (('--gauntlet', args.gauntlet), ('--out', args.out), ('--batch-size', args.batch_size),
                        ('--max-seq-len', args.max_seq_len), ('--eval-split', args.eval_split),
                        ('--eval-batches', args.eval_batches), ('--device', args.device),
                        ('--precision', args.precision), ('--meta', args.meta)):
        if value is not None:
            argv += [name, str(value)]
    for path in args.eval_data:
        argv += ['--eval-data', path]
    argv += ['--no-share-context'] * args.no_share_context + ['--examples'] * args.examples
    return argv


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from foundry.eval.gauntlet import check_against_tasks, compute_gauntlet, parse_gauntlet
    from foundry.eval.report import markdown, write_report
    from foundry.eval.runner import Collectives, EvalSettings, composer_collectives, evaluate, load_tasks
    from foundry.eval.scoring import ModelRunner
    from foundry.eval.tasks import parse_icl_tasks

    device_kind = args.device or ('gpu' if torch.cuda.is_available() else 'cpu')
    if device_kind == 'gpu' and not torch.cuda.is_available():
        raise ConfigError('--device gpu, but torch sees no CUDA device; use --device cpu')
    tasks_value, gauntlet_value = _read_tasks_file(args.tasks)
    tasks = parse_icl_tasks(tasks_value, f'icl_tasks ({args.tasks})')
    gauntlet = parse_gauntlet(args.gauntlet or gauntlet_value)
    if gauntlet is not None:
        check_against_tasks(gauntlet, tasks)

    start = time.perf_counter()
    # Before any process group exists: with one, torch's distributed checkpoint reader turns collective.
    model, tokenizer = load_model(args.src, args.meta)
    world = int(os.environ.get('WORLD_SIZE', '1'))
    collectives = Collectives()
    if world > 1:
        from composer.utils import dist

        if device_kind == 'gpu':
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
        dist.initialize_dist(device_kind)
        collectives = composer_collectives()
    device = torch.device('cuda', torch.cuda.current_device()) if device_kind == 'gpu' else torch.device('cpu')
    model.to(device).eval()
    precision = args.precision or ('bf16' if device_kind == 'gpu' else 'fp32')
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == 'bf16' else contextlib.nullcontext
    max_seq_len = args.max_seq_len or model.config.max_seq_len
    settings = EvalSettings(batch_size=args.batch_size, max_seq_len=max_seq_len,
                            share_context=not args.no_share_context, keep_examples=args.examples)
    runner = ModelRunner(model, device, autocast, pad_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0)
    loaded = load_tasks(tasks)
    results = evaluate(runner, tokenizer, loaded, settings, collectives)
    report: dict[str, Any] = {
        'source': args.src, 'device': str(device) if world == 1 else f'{device_kind} x {world}',
        'processes': world, 'batch_size': args.batch_size, 'max_seq_len': max_seq_len,
        'task_types': {t.label: t.icl_task_type for t in tasks},
        'results': results,
        'gauntlet': compute_gauntlet(gauntlet, results) if gauntlet is not None else None,
    }
    if args.eval_data:
        report['perplexity'] = held_out_perplexity(model, tokenizer, args.eval_data, args.eval_split, args.batch_size,
                                                   max_seq_len, args.eval_batches, device, autocast, collectives)
    report['seconds'] = round(time.perf_counter() - start, 2)
    if collectives.rank == 0:
        json_path, md_path = write_report(report, args.out)
        print(markdown(report))
        print(f'written: {json_path}\n         {md_path}')
    return 0


def _read_tasks_file(path: str) -> tuple[Any, Any]:
    import yaml

    if not os.path.isfile(path):
        raise ConfigError(f'tasks file not found: {path}')
    with open(path, encoding='utf-8') as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or 'icl_tasks' not in data:
        raise ConfigError(f'{path} must hold a mapping with `icl_tasks:` (a list of tasks or a path to one)')
    return data['icl_tasks'], data.get('eval_gauntlet')


def load_model(src: str, meta: Optional[str] = None):
    """(MPTForCausalLM on CPU, tokenizer) from a Hugging Face folder or a Composer checkpoint."""
    from foundry.data.tokenizer import build_tokenizer
    from foundry.models.mpt.modeling import MPTForCausalLM

    if os.path.isdir(src) and os.path.isfile(os.path.join(src, 'config.json')):
        return MPTForCausalLM.from_pretrained(src), build_tokenizer(src)
    from foundry.checkpoint.meta import find_run_meta
    from foundry.checkpoint.reader import iter_model_tensors, resolve_local_checkpoint
    from foundry.models.mpt.configuration import MPTConfig

    local = resolve_local_checkpoint(src)
    if meta is None:
        try:
            meta = find_run_meta(local)
        except ConfigError:
            meta = find_run_meta(src)  # a symlink into another folder
    config = MPTConfig.from_pretrained(meta)
    config.init_device = 'cpu'
    model = MPTForCausalLM(config)
    state = {}
    for group in iter_model_tensors(local):
        state.update(group)
    expected = set(model.state_dict())
    state = {k: v for k, v in state.items() if k in expected}  # a tied lm_head is not a separate tensor here
    missing = expected - set(state)
    if missing:
        raise ConfigError(f'{src}: the checkpoint lacks {len(missing)} model tensors (e.g. {sorted(missing)[0]}); '
                          f'is {meta} the config of the run that wrote it?')
    model.load_state_dict(state)
    return model, build_tokenizer(meta)


def held_out_perplexity(model, tokenizer, data: list[str], split: Optional[str], batch_size: int, max_seq_len: int,
                        max_batches: int, device, autocast, collectives) -> dict[str, Any]:
    """Token-weighted cross-entropy over each MDS dataset (and all together); rank-split, summed across ranks."""
    import torch
    import torch.nn.functional as F

    from foundry.data.stream.text_loader import build_text_dataloader

    per_data = []
    for path in data:
        dataset = {'max_seq_len': max_seq_len, 'shuffle': False, 'split': split}
        dataset['remote' if '://' in path else 'local'] = path
        spec = build_text_dataloader({'name': 'text', 'dataset': dataset, 'drop_last': False, 'num_workers': 0},
                                     tokenizer, batch_size)
        loss_sum, tokens = 0.0, 0
        for i, batch in enumerate(spec.dataloader):
            if 0 <= max_batches <= i:
                break
            ids = batch['input_ids'].to(device)
            labels = batch['labels'].to(device)[:, 1:]
            with torch.no_grad(), autocast():
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            loss_sum += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                              ignore_index=-100, reduction='sum'))
            tokens += int((labels != -100).sum())
        parts = collectives.gather((loss_sum, tokens))
        loss_sum, tokens = sum(p[0] for p in parts), sum(p[1] for p in parts)
        per_data.append({'data': path + (f' [{split}]' if split else ''), 'tokens': tokens,
                         'cross_entropy': loss_sum / tokens, 'perplexity': math.exp(loss_sum / tokens)})
    if len(per_data) == 1:
        return per_data[0]
    tokens = sum(p['tokens'] for p in per_data)
    ce = sum(p['cross_entropy'] * p['tokens'] for p in per_data) / tokens
    return {'data': ' + '.join(p['data'] for p in per_data), 'tokens': tokens, 'cross_entropy': ce,
            'perplexity': math.exp(ce), 'each': per_data}


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m foundry.eval.cli SRC TASKS.yaml ...` (what --nproc launches on each process)."""
    from foundry.data.errors import DataError

    parser = argparse.ArgumentParser(prog='foundry eval')
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_eval(args)
    except (ConfigError, DataError) as e:
        kind = 'config error' if isinstance(e, ConfigError) else 'data error'
        print(f'foundry: {kind}: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
