"""Every bad input gets one line naming the key or file, no traceback, a non-zero exit, nothing left behind.

One table over every entry point, run in this process as the commands run it (`foundry.train.main` is what
`composer launch/train.py` calls, `foundry.cli.main` is `foundry`, the converters' `main`): training configs
and command-line overrides, `foundry info`, `foundry plan`, `foundry export hf`, the converters, and
resuming. The resume cases start from one real finished 2-batch run (tiny.yaml, in this process).
tests/e2e/test_bad_inputs_launcher.py runs a few through the real `composer -n 2` launcher.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional

import pytest

from tests.e2e.conftest import REPO, TINY_YAML, tiny_data  # noqa: F401  (the corpus fixture)


@dataclass(frozen=True)
class Case:
    id: str
    entry: str  # train | launch | info | plan | export | convert | resume
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the one line: the key or file named, and the fix
    setup: Optional[Callable[['Env'], None]] = None
    left_behind: Optional[str] = None  # a path (with {tmp}) that must not exist after the refusal
    s3: bool = False  # runs against the moto S3 endpoint (tests/conftest.py)


@dataclass
class Env:
    data: str
    tmp: str
    run: str  # a finished 2-batch run: {run}/checkpoints/ep0-ba2, {run}/checkpoints/hf_meta
    monkeypatch: pytest.MonkeyPatch

    def fill(self, text: str) -> str:
        return text.replace('{data}', self.data).replace('{tmp}', self.tmp).replace('{run}', self.run)


def _no_wandb_login(env: Env) -> None:
    for key in ('WANDB_MODE', 'WANDB_API_KEY', 'WANDB_IDENTITY_TOKEN_FILE', 'WANDB_DISABLED', 'WANDB_BASE_URL'):
        env.monkeypatch.delenv(key, raising=False)
    env.monkeypatch.setenv('NETRC', os.path.join(env.tmp, 'no-netrc'))


def _two_processes(env: Env) -> None:
    env.monkeypatch.setenv('WORLD_SIZE', '2')


def _file(path: str) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        full = env.fill(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        open(full, 'w').close()
    return make


def _copy_checkpoint(name: str, truncate: bool = False) -> Callable[[Env], None]:
    """{tmp}/ck: a copy of the finished run's save folder with `name` a copy of ep0-ba2, maybe truncated."""
    def make(env: Env) -> None:
        shutil.copytree(f'{env.run}/checkpoints', f'{env.tmp}/ck', symlinks=True)
        shutil.copytree(f'{env.tmp}/ck/ep0-ba2', f'{env.tmp}/ck/{name}')
        if truncate:
            shard = f'{env.tmp}/ck/{name}/__0_0.distcp'
            with open(shard, 'r+b') as f:
                f.truncate(os.path.getsize(shard) // 2)
    return make


def _streams(*entries: str) -> str:
    return 'train_loader.dataset.streams={' + ', '.join(entries) + '}'


TRAIN = [
    Case('max_duration banana', 'train', ('max_duration=banana',), ('`max_duration`', "'240ba'")),
    Case('max_duration 0ba', 'train', ('max_duration=0ba',), ('`max_duration`', 'greater than zero')),
    Case('max_duration in dur', 'train', ('max_duration=0.5dur',), ('`max_duration`', "unit 'dur'")),
    Case('max_duration fractional batches', 'train', ('max_duration=2.5ba',), ('`max_duration`', 'whole')),
    Case('eval_interval banana', 'train', ('eval_interval=banana',), ('`eval_interval`',)),
    Case('save_interval banana', 'train', ('save_interval=banana',), ('`save_interval`',)),
    Case('save_interval 0', 'train', ('save_interval=0ba',), ('`save_interval`', 'greater than zero')),
    Case('console_log_interval 2dur', 'train', ('console_log_interval=2dur',), ('`console_log_interval`', '(0, 1]')),
    Case('t_warmup banana', 'train', ('scheduler.t_warmup=banana',), ('`scheduler.t_warmup`',)),
    Case('t_warmup unit vs max_duration', 'train', ('scheduler.t_warmup=100ba', 'max_duration=2560tok'),
         ('`scheduler.t_warmup`', 'one unit')),
    Case('t_max below max_duration', 'train', ('scheduler.t_max=3ba',), ('`scheduler.t_max`', 'at least max_duration')),
    Case('t_warmup missing', 'train', ('scheduler.t_warmup=null',), ('`scheduler.t_warmup`',)),
    Case('betas of one', 'train', ('optimizer.betas=[0.9]',), ('`optimizer.betas`', 'two numbers')),
    Case('betas not numbers', 'train', ('optimizer.betas=[a,b]',), ('`optimizer.betas[0]`', 'number')),
    Case('beta of 1', 'train', ('optimizer.betas=[0.9,1.0]',), ('`optimizer.betas[1]`', 'below 1')),
    Case('negative lr', 'train', ('optimizer.lr=-1e-3',), ('`optimizer.lr`', 'at least 0')),
    Case('lr typo', 'train', ('optimizer.lrr=1e-3',), ('`optimizer.lrr`', 'did you mean `optimizer.lr`')),
    Case('n_heads not dividing d_model', 'train', ('model.n_heads=3',), ('model.', 'n_heads (3)')),
    Case('no layers', 'train', ('model.n_layers=0',), ('`model.n_layers`', 'positive')),
    Case('vocab below tokenizer', 'train', ('model.vocab_size=100',), ('`model.vocab_size`', '512')),
    Case('unknown attn_impl', 'train', ('model.attn_config.attn_impl=cuda',), ('`model.attn_config.attn_impl`',)),
    Case('kv heads not dividing', 'train', ('model.attn_config.attn_type=grouped_query_attention',
                                            'model.attn_config.kv_n_heads=3'), ('`model.attn_config.kv_n_heads`',)),
    Case('batch not divisible by processes', 'train', ('global_train_batch_size=7',),
         ('`global_train_batch_size`', '(2)'), setup=_two_processes),
    Case('microbatch zero', 'train', ('device_train_microbatch_size=0',), ('`device_train_microbatch_size`',)),
    Case('eval batch zero', 'train', ('device_eval_batch_size=0',), ('`device_eval_batch_size`',)),
    Case('eval_subset_num_batches 0', 'train', ('eval_subset_num_batches=0',), ('`eval_subset_num_batches`',)),
    Case('negative seed', 'train', ('seed=-1',), ('`seed`', '2**32')),
    Case('log level', 'train', ('python_log_level=loud',), ('`python_log_level`',)),
    Case('negative workers', 'train', ('train_loader.num_workers=-1',), ('`train_loader.num_workers`',)),
    Case('shuffle_algo', 'train', ('train_loader.dataset.shuffle_algo=fast',), ('`train_loader.dataset.shuffle_algo`',
                                                                              'py1e')),
    Case('max_seq_len zero', 'train', ('train_loader.dataset.max_seq_len=0',),
         ('`train_loader.dataset.max_seq_len`',)),
    Case('cache_limit', 'train', ('train_loader.dataset.cache_limit=lots',), ('`train_loader.dataset.cache_limit`',)),
    Case('negative proportion', 'train', (_streams('a: {local: x, proportion: -0.5}', 'b: {local: y, proportion: 1.5}'),),
         ('`train_loader.dataset.streams.a.proportion`',)),
    Case('proportions add to 0', 'train', (_streams('a: {local: x, proportion: 0}', 'b: {local: y, proportion: 0}'),),
         ('`train_loader.dataset.streams`', 'add up to 0')),
    Case('proportion and none mixed', 'train', (_streams('a: {local: x, proportion: 1}', 'b: {local: y}'),),
         ('`train_loader.dataset.streams`', 'b do not')),
    Case('proportion and repeat', 'train', (_streams('a: {local: x, proportion: 1, repeat: 2}'),),
         ('`train_loader.dataset.streams.a`', 'at most one')),
    Case('hf_checkpointer without folder', 'train', ('callbacks={hf_checkpointer: {save_interval: 2ba}}',),
         ('`callbacks.hf_checkpointer.save_folder`',)),
    Case('wandb without login', 'train', ('loggers={wandb: {project: p}}',), ('`loggers.wandb`', 'WANDB_MODE=offline'),
         setup=_no_wandb_login, left_behind='{tmp}/checkpoints'),
    Case('load_path missing', 'train', ('autoresume=false', 'load_path={tmp}/nope'), ('`load_path`', '{tmp}/nope')),
    Case('grad clipping 0', 'train', ('algorithms.gradient_clipping={clipping_type: norm, clipping_threshold: 0}',),
         ('`algorithms.gradient_clipping.clipping_threshold`',)),
]

OVERRIDES = [
    Case('override without =', 'train', ('optimizer.lr',), ('`optimizer.lr`', 'key=value')),
    Case('override to a missing variable', 'train', ('max_duration=${variables.nope}',), ('variables.nope',)),
    Case('override of a number with text', 'train', ('global_train_batch_size=eight',),
         ('`global_train_batch_size`', 'integer')),
    Case('missing yaml', 'train', ('@{tmp}/none.yaml',), ('{tmp}/none.yaml',)),
]

LAUNCH = [  # python -m foundry.launch: checked once in the launcher, before any rank starts
    Case('launcher: max_duration banana', 'launch', ('max_duration=banana',), ('`max_duration`',),
         left_behind='{tmp}/checkpoints'),
    Case('launcher: batch vs WORLD_SIZE', 'launch', ('global_train_batch_size=7',), ('`global_train_batch_size`',),
         setup=_two_processes),
    Case('launcher: wandb without login', 'launch', ('loggers={wandb: {}}',), ('`loggers.wandb`',),
         setup=_no_wandb_login),
]

INFO = [
    Case('info negative proportion', 'info', (_streams('a: {local: x, proportion: 1.5}', 'b: {local: y, proportion: -0.5}'),),
         ('`train_loader.dataset.streams.b.proportion`',)),
    Case('info n_heads', 'info', ('model.n_heads=3',), ('n_heads (3)',)),
    Case('info max_duration', 'info', ('max_duration=banana',), ('`max_duration`',)),
    Case('info betas', 'info', ('optimizer.betas=[0.9]',), ('`optimizer.betas`',)),
    Case('info wandb', 'info', ('loggers={wandb: {}}',), ('`loggers.wandb`',), setup=_no_wandb_login),
]

PLAN = [
    Case('plan negative micro-batch', 'plan', ('--micro-batch', '-2'), ('--micro-batch', 'greater than zero')),
    Case('plan negative reserved memory', 'plan', ('--reserved-gib', '-100'), ('--reserved-gib', 'zero or more')),
    Case('plan zero gpus', 'plan', ('--gpus', '0'), ('--gpus', 'greater than zero')),
    Case('plan mfu above 1', 'plan', ('--mfu', '45'), ('--mfu', 'fraction')),
    Case('plan unknown gpu', 'plan', ('--gpu', 'tpu'), ('--gpu', 'h100')),
    Case('plan config error', 'plan', ('max_duration=banana',), ('`max_duration`',)),
]

EXPORT = [
    Case('export to a file', 'export', ('{run}/checkpoints/ep0-ba2', '{tmp}/afile'), ('{tmp}/afile', 'is a file'),
         setup=_file('{tmp}/afile')),
    Case('export a truncated checkpoint', 'export', ('{tmp}/ck/ep0-ba4', '{tmp}/out'),
         ('{tmp}/ck/ep0-ba4', 'not a whole checkpoint', 'ep0-ba2'), setup=_copy_checkpoint('ep0-ba4', truncate=True),
         left_behind='{tmp}/out'),
    Case('export an .incomplete one', 'export', ('{tmp}/ck/ep0-ba4.incomplete', '{tmp}/out'),
         ('ep0-ba4.incomplete', 'incomplete', 'ep0-ba2'), setup=_copy_checkpoint('ep0-ba4.incomplete'),
         left_behind='{tmp}/out'),
    Case('export a save folder', 'export', ('{run}/checkpoints', '{tmp}/out'),
         ('{run}/checkpoints', 'save folder', 'ep0-ba2'), left_behind='{tmp}/out'),
    Case('export a missing checkpoint', 'export', ('{tmp}/nope', '{tmp}/out'), ('{tmp}/nope', 'not found'),
         left_behind='{tmp}/out'),
    Case('export without hf_meta', 'export', ('{tmp}/lone/ep0-ba2', '{tmp}/out'), ('hf_meta', '--meta'),
         setup=lambda env: shutil.copytree(f'{env.run}/checkpoints/ep0-ba2', f'{env.tmp}/lone/ep0-ba2'),
         left_behind='{tmp}/out'),
    Case('export from a missing bucket', 'export', ('s3://no-such-bucket/ck/ep0-ba2', '{tmp}/out'),
         ('s3://no-such-bucket/ck/ep0-ba2', 'bucket does not exist'), left_behind='{tmp}/out', s3=True),
    Case('export bad dtype', 'export', ('{run}/checkpoints/ep0-ba2', '{tmp}/out', '--dtype', 'fp8'), ('--dtype',)),
]

CONVERT = [
    Case('convert concat_tokens 0', 'convert', ('--concat_tokens', '0'), ('concat_tokens',), left_behind='{tmp}/mds'),
    Case('convert out_root a file', 'convert', ('--out_root', '{tmp}/afile', '--split', ''), ('{tmp}/afile', 'file'),
         setup=_file('{tmp}/afile')),
    Case('convert missing input', 'convert', ('--path', '{tmp}/none.jsonl'), ('{tmp}/none.jsonl', 'does not exist'),
         left_behind='{tmp}/mds'),
    Case('convert missing tokenizer', 'convert', ('--tokenizer', '{tmp}/none/tokenizer.json'),
         ('{tmp}/none/tokenizer.json',), left_behind='{tmp}/mds'),
    Case('convert bad compression', 'convert', ('--compression', 'zip9'), ('zip9',), left_behind='{tmp}/mds'),
    Case('convert bad part size', 'convert', ('--part_size', 'big'), ('big',), left_behind='{tmp}/mds'),
    Case('convert missing text field', 'convert', ('--text_field', 'body'), ("'body'", '--text_field'),
         left_behind='{tmp}/mds'),
    Case('convert flag typo', 'convert', ('--concat_token', '8'), ('--concat_token', '--concat_tokens')),
]

RESUME = [
    Case('finished run started again', 'resume', (), ('already finished at batch 2', 'raise max_duration')),
    Case('load_path past max_duration', 'resume', ('run_folder={tmp}/r', 'save_folder={tmp}/c', 'max_duration=1ba',
                                                   'load_path={run}/checkpoints/ep0-ba2'),
         ('load_path {run}/checkpoints/ep0-ba2', 'batch 2', 'load_weights_only'), left_behind='{tmp}/c'),
    Case('load_path of another shape', 'resume', ('run_folder={tmp}/r', 'save_folder={tmp}/c', 'max_duration=4ba',
                                                  'load_path={run}/checkpoints/ep0-ba2', 'model.d_model=64'),
         ('load_path', 'transformer.wte.weight', '[512, 32]', 'model.d_model=32'), left_behind='{tmp}/c'),
    Case('load_path in a missing bucket', 'resume', ('run_folder={tmp}/r', 'save_folder={tmp}/c', 'max_duration=4ba',
                                                    'autoresume=false', 'load_path=s3://no-such-bucket/ck/ep0-ba2'),
         ('load_path s3://no-such-bucket/ck/ep0-ba2', 'bucket does not exist'), left_behind='{tmp}/c', s3=True),
    Case('resume with another shape', 'resume', ('max_duration=4ba', 'model.n_layers=3'),
         ('save_folder', 'model.n_layers=2 where this config has 3')),
]

CASES = TRAIN + OVERRIDES + LAUNCH + INFO + PLAN + EXPORT + CONVERT + RESUME


@pytest.fixture(scope='module')
def finished_run(tiny_data, tmp_path_factory) -> str:  # noqa: F811
    """A tiny run trained to its max_duration (2 batches), with its checkpoint and hf_meta."""
    from foundry.train import main

    root = str(tmp_path_factory.mktemp('finished'))
    assert main([TINY_YAML, *_run_overrides(tiny_data, root), 'max_duration=2ba', 'save_interval=2ba']) == 0
    return root


def _run_overrides(data: str, root: str) -> list[str]:
    return [f'variables.data_root={data}', f'train_loader.dataset.local={data}/english', f'run_folder={root}/run',
            f'save_folder={root}/checkpoints']


def _convert_args(env: Env, extra: tuple[str, ...]) -> list[str]:
    with open(f'{env.tmp}/in.jsonl', 'w') as f:
        f.write('{"text": "one small document"}\n{"text": "and another"}\n')
    base = {'--path': f'{env.tmp}/in.jsonl', '--out_root': f'{env.tmp}/mds', '--concat_tokens': '8',
            '--tokenizer': f'{env.data}/tokenizer.json'}
    extra = list(extra)
    for i in range(0, len(extra) - 1, 2):
        if extra[i] in base:
            base[extra[i]] = extra[i + 1]
            extra[i] = extra[i + 1] = None
    return [a for kv in base.items() for a in kv] + [a for a in extra if a is not None] + ['--no_progress']


def run_case(case: Case, env: Env) -> int:
    from foundry.cli import main as foundry_main
    from foundry.train import main as train_main

    args = [env.fill(a) for a in case.args]
    if case.entry == 'train':
        yaml = args.pop(0)[1:] if args and args[0].startswith('@') else TINY_YAML
        return train_main([yaml, *_run_overrides(env.data, env.tmp), *args])
    if case.entry == 'launch':
        import sys

        from foundry.launch import main as launch_main

        env.monkeypatch.setattr(sys, 'argv', ['foundry.launch', '-n', '2', os.path.join(REPO, 'launch', 'train.py'),
                                              TINY_YAML, *_run_overrides(env.data, env.tmp), *args])
        return launch_main()
    if case.entry == 'resume':
        return train_main([TINY_YAML, *_run_overrides(env.data, env.run), 'save_interval=2ba', 'max_duration=2ba',
                           *args])
    try:
        if case.entry == 'info':
            return foundry_main(['info', TINY_YAML, f'variables.data_root={env.data}', *args])
        if case.entry == 'plan':
            flags = {'--gpus': '8', '--gpu': 'h100'}
            for i in range(0, len(args) - 1):
                if args[i] in flags:
                    flags[args[i]] = args[i + 1]
                    args[i] = args[i + 1] = ''
            return foundry_main(['plan', TINY_YAML, *[a for kv in flags.items() for a in kv], *[a for a in args if a]])
        if case.entry == 'export':
            return foundry_main(['export', 'hf', *args])
        if case.entry == 'convert':
            path = os.path.join(REPO, 'data_prep', 'convert_dataset_json.py')
            spec = importlib.util.spec_from_file_location('convert_dataset_json', path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.main(_convert_args(env, tuple(args)))
    except SystemExit as e:
        return int(e.code or 0)
    raise AssertionError(case.entry)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_line_naming_it(case, tiny_data, finished_run, tmp_path, monkeypatch, capsys,  # noqa: F811
                                           request):
    env = Env(data=tiny_data, tmp=str(tmp_path), run=finished_run, monkeypatch=monkeypatch)
    if case.s3:
        request.getfixturevalue('s3_endpoint')
    monkeypatch.setenv('WANDB_MODE', 'offline')  # this machine's own settings never decide a case
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    if case.setup is not None:
        case.setup(env)
    capsys.readouterr()
    status = run_case(case, env)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ': error: ' in line or line.startswith('foundry: ')]
    print(f'{case.id} | {case.entry} | exit {status} | {errors[-1] if errors else err[-300:]}')
    assert status == 2, (status, out[-2000:], err[-3000:])
    assert 'Traceback' not in err + out
    assert len(errors) == 1, lines
    assert lines[-1] == errors[0], lines
    if case.entry not in ('resume', 'convert'):  # these log what they decided (start, encoder) before refusing
        assert len(lines) == 1, lines
    for expected in case.expect:
        assert env.fill(expected) in errors[0], (expected, errors[0])
    if case.left_behind:
        assert not os.path.exists(env.fill(case.left_behind)), f'{env.fill(case.left_behind)} was left behind'


def test_runtime_faults_become_one_line_naming_the_fix():
    """What main() does with faults met after launch (here the real exception classes, raised by their libraries)."""
    import botocore.exceptions
    import wandb.errors

    from foundry.user_errors import runtime_fault

    message = runtime_fault(wandb.errors.UsageError('No API key configured. Use `wandb login` to log in.'))
    assert '`loggers.wandb`' in message and 'WANDB_MODE=offline' in message and '\n' not in message
    message = runtime_fault(botocore.exceptions.NoCredentialsError())
    assert 'object store error' in message and 'AWS_ACCESS_KEY_ID' in message
    mismatch = RuntimeError('Error(s) in loading state_dict for MPTForCausalLM:\n\tsize mismatch for '
                            'transformer.wte.weight: copying a param with shape torch.Size([512, 32]) from checkpoint, '
                            'the shape in current model is torch.Size([512, 64]).')
    message = runtime_fault(mismatch, SimpleNamespace(load_path='/ck/ep0-ba2', save_folder=None))
    assert '/ck/ep0-ba2' in message and 'transformer.wte.weight' in message and '\n' not in message
    assert runtime_fault(ZeroDivisionError('a bug')) is None  # a bug keeps its traceback


def test_runtime_fault_traceback_goes_to_the_run_folder(tmp_path, monkeypatch):
    from foundry.user_errors import write_traceback

    monkeypatch.setenv('RANK', '1')
    try:
        raise RuntimeError('deep inside')
    except RuntimeError as e:
        path = write_traceback(e, str(tmp_path / 'run'))
    assert path == str(tmp_path / 'run' / 'error-rank1.log')
    text = open(path).read()
    assert 'Traceback (most recent call last)' in text and 'RuntimeError: deep inside' in text


def test_a_rank_that_alone_meets_an_error_still_says_it(monkeypatch, capsys):
    """Ranks but local rank 0 stay quiet while the launcher may still end them; one that outlives the wait
    (local rank 0 did not fail: the error was this rank's alone) prints the line after all."""
    import signal

    from foundry.user_errors import report_user_error

    monkeypatch.setenv('LOCAL_RANK', '1')
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert report_user_error('data error: shard 7 is truncated', grace_seconds=0.3) == 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == 'foundry: data error: shard 7 is truncated\n'
