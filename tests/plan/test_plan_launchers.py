"""Multi-node launchers: launch/env/train.sh (env vars), launch/slurm/train.sbatch, launch/k8s/train-job.yaml.

Nothing here starts training: train.sh's dry-run prints the composer command line, and SLURM's
`srun`/`scontrol` are replaced by stubs. The real two-node run lives with the end-to-end tests.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_SH = os.path.join(ROOT, 'launch', 'env', 'train.sh')
SBATCH = os.path.join(ROOT, 'launch', 'slurm', 'train.sbatch')
K8S = os.path.join(ROOT, 'launch', 'k8s', 'train-job.yaml')
YAML = 'yamls/pretrain/mpt-7b.yaml'
VARS = {'MASTER_ADDR': 'node-0.example', 'MASTER_PORT': '29500', 'NODE_RANK': '1', 'WORLD_SIZE': '16',
        'LOCAL_WORLD_SIZE': '8'}


def _env(**changes):
    env = {k: v for k, v in os.environ.items()
           if k not in VARS and not k.startswith(('SLURM_', 'FOUNDRY_'))}
    env.update(changes)
    return {k: v for k, v in env.items() if v is not None}


def train_sh(*args, **env):
    return subprocess.run(['bash', TRAIN_SH, *args], cwd=ROOT, env=_env(**env), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize('script', [TRAIN_SH, SBATCH])
def test_scripts_are_executable_bash(script):
    assert os.stat(script).st_mode & stat.S_IXUSR
    assert subprocess.run(['bash', '-n', script]).returncode == 0


def test_dry_run_prints_the_composer_command():
    r = train_sh('--dry-run', YAML, 'run_name=x', 'optimizer.lr=1e-4', **VARS)
    assert r.returncode == 0, r.stderr
    assert shlex.split(r.stdout) == [
        'python', '-m', 'foundry.launch', '--world_size', '16', '--node_rank', '1', '--nproc', '8',
        '--master_addr', 'node-0.example', '--master_port', '29500',
        os.path.join(ROOT, 'launch', 'train.py'), YAML, 'run_name=x', 'optimizer.lr=1e-4']


def test_dry_run_from_the_environment_and_log_dir(tmp_path):
    r = train_sh(YAML, FOUNDRY_DRY_RUN='1', FOUNDRY_LOG_DIR=str(tmp_path / 'logs'), COMPOSER='/opt/composer', **VARS)
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    assert argv[0] == '/opt/composer'
    assert argv[argv.index('--stdout') + 1] == f'{tmp_path}/logs/rank{{rank}}.stdout.txt'
    assert argv[argv.index('--stderr') + 1] == f'{tmp_path}/logs/rank{{rank}}.stderr.txt'


def test_missing_variables_are_named():
    r = train_sh('--dry-run', YAML)
    assert r.returncode == 2
    assert 'missing environment variable(s): MASTER_ADDR MASTER_PORT NODE_RANK WORLD_SIZE LOCAL_WORLD_SIZE' in r.stderr
    for var in VARS:
        r = train_sh('--dry-run', YAML, **{**VARS, var: None})
        assert r.returncode == 2 and r.stdout == ''
        assert f'missing environment variable(s): {var}.' in r.stderr
    r = train_sh('--dry-run', YAML, **{**VARS, 'NODE_RANK': ''})  # set but empty counts as missing
    assert 'missing environment variable(s): NODE_RANK.' in r.stderr


@pytest.mark.parametrize('changes,message', [
    ({'WORLD_SIZE': 'two'}, "WORLD_SIZE must be a non-negative integer, got 'two'"),
    ({'MASTER_PORT': '70000'}, 'MASTER_PORT must be in 1..65535'),
    ({'LOCAL_WORLD_SIZE': '0'}, 'LOCAL_WORLD_SIZE must be at least 1'),
    ({'WORLD_SIZE': '2'}, 'counts processes on all nodes (nodes x LOCAL_WORLD_SIZE), not nodes'),
    ({'WORLD_SIZE': '12'}, 'must be a multiple of LOCAL_WORLD_SIZE'),
    ({'NODE_RANK': '2'}, 'NODE_RANK (2) must be below the number of nodes, WORLD_SIZE / LOCAL_WORLD_SIZE = 2'),
])
def test_inconsistent_variables(changes, message):
    r = train_sh('--dry-run', YAML, **{**VARS, **changes})
    assert r.returncode == 2 and message in r.stderr


def test_usage_missing_config_and_missing_composer():
    r = train_sh(**VARS)
    assert r.returncode == 2 and 'usage:' in r.stderr
    r = train_sh('--dry-run', 'yamls/pretrain/nope.yaml', **VARS)
    assert r.returncode == 2 and 'config file not found: yamls/pretrain/nope.yaml' in r.stderr
    r = train_sh(YAML, COMPOSER='/nonexistent/composer', **VARS)
    assert r.returncode == 2 and "'/nonexistent/composer' not found" in r.stderr


def _stub(bin_dir, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text('#!/usr/bin/env bash\n' + body)
    path.chmod(0o755)


@pytest.fixture
def fake_slurm(tmp_path):
    """`scontrol show hostnames` lists two hosts; `srun` runs its command once per node, in order,
    with SLURM_NODEID set, as SLURM does for --ntasks-per-node=1."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _stub(bin_dir, 'scontrol', 'printf "gpu-a\\ngpu-b\\n"\n')
    _stub(bin_dir, 'srun', 'echo "srun $*" >> "$SRUN_LOG"\n'
                           'while [[ "$1" == --* ]]; do shift; done\n'
                           'for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do SLURM_NODEID=$i "$@" || exit $?; done\n')
    return bin_dir


def test_sbatch_starts_composer_on_every_node(fake_slurm, tmp_path):
    log = tmp_path / 'srun.log'
    env = _env(PATH=f'{fake_slurm}:{os.environ["PATH"]}', SLURM_JOB_ID='1234', SLURM_JOB_NUM_NODES='2',
               SLURM_JOB_NODELIST='gpu-[a-b]', SLURM_GPUS_PER_NODE='h100:8', SLURM_SUBMIT_DIR=ROOT,
               FOUNDRY_DRY_RUN='1', SRUN_LOG=str(log))
    r = subprocess.run(['bash', SBATCH, YAML, 'run_name=slurm'], cwd='/', env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        argv = shlex.split(line)
        assert argv[:13] == ['python', '-m', 'foundry.launch', '--world_size', '16', '--node_rank', str(rank),
                             '--nproc', '8', '--master_addr', 'gpu-a', '--master_port', str(20000 + 1234)]
        assert argv[13:] == [os.path.join(ROOT, 'launch', 'train.py'), YAML, 'run_name=slurm']
    assert '--ntasks-per-node=1' in log.read_text()


def test_sbatch_errors(fake_slurm):
    r = subprocess.run(['bash', SBATCH, YAML], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'SLURM_JOB_ID is not set' in r.stderr
    env = _env(PATH=f'{fake_slurm}:/usr/bin:/bin', SLURM_JOB_ID='7', SLURM_JOB_NUM_NODES='2',
               SLURM_JOB_NODELIST='gpu-[a-b]', SLURM_SUBMIT_DIR=ROOT)
    r = subprocess.run(['bash', SBATCH, YAML], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and 'cannot tell the GPUs per node' in r.stderr


def test_k8s_indexed_job_sets_the_variables_train_sh_needs():
    with open(K8S) as f:
        service, job = list(yaml.safe_load_all(f))
    assert service['kind'] == 'Service' and service['spec']['clusterIP'] == 'None'
    assert job['kind'] == 'Job' and job['spec']['completionMode'] == 'Indexed'
    pod = job['spec']['template']['spec']
    assert pod['subdomain'] == service['metadata']['name']
    container = pod['containers'][0]
    assert container['command'][0] == 'launch/env/train.sh'
    env = {e['name']: e for e in container['env']}
    assert set(VARS) <= set(env)
    assert 'job-completion-index' in env['NODE_RANK']['valueFrom']['fieldRef']['fieldPath']
    local = int(env['LOCAL_WORLD_SIZE']['value'])
    assert int(env['WORLD_SIZE']['value']) == job['spec']['completions'] * local
    assert container['resources']['limits']['nvidia.com/gpu'] == local
    assert job['spec']['parallelism'] == job['spec']['completions']
    name, svc = job['metadata']['name'], service['metadata']['name']
    assert env['MASTER_ADDR']['value'] == f'{name}-0.{svc}'


def test_sbatch_requeues_the_job_when_training_stops_for_preemption(tmp_path):
    """Exit status 75 (preemption.exit_code: stopped after saving a checkpoint) -> `scontrol requeue`;
    any other failure is passed on as it is."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _stub(bin_dir, 'scontrol', 'if [[ "$1" == requeue ]]; then echo "scontrol $*" >> "$SRUN_LOG"; '
                               'else printf "gpu-a\\ngpu-b\\n"; fi\n')
    _stub(bin_dir, 'srun', 'exit "$SRUN_EXIT"\n')
    log = tmp_path / 'calls.log'
    for srun_exit, requeued in (('75', True), ('1', False)):
        env = _env(PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='99', SLURM_JOB_NUM_NODES='2',
                   SLURM_JOB_NODELIST='gpu-[a-b]', SLURM_GPUS_PER_NODE='8', SLURM_SUBMIT_DIR=ROOT,
                   SRUN_LOG=str(log), SRUN_EXIT=srun_exit)
        r = subprocess.run(['bash', SBATCH, YAML], cwd='/', env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == int(srun_exit), r.stderr
        assert (log.exists() and 'scontrol requeue 99' in log.read_text()) == requeued, r.stderr
        assert ('requeueing job 99' in r.stderr) == requeued
        log.unlink(missing_ok=True)
    with open(SBATCH) as f:
        header = f.read()
    assert '#SBATCH --requeue' in header and '#SBATCH --signal=USR1@120' in header


def test_k8s_job_replaces_a_pod_stopped_for_preemption():
    with open(K8S) as f:
        _, job = list(yaml.safe_load_all(f))
    rules = job['spec']['podFailurePolicy']['rules']
    assert {'action': 'Ignore', 'onExitCodes': {'containerName': 'train', 'operator': 'In', 'values': [75]}} in rules
    pod = job['spec']['template']['spec']
    assert pod['restartPolicy'] == 'Never' and pod['containers'][0]['name'] == 'train'
    assert pod['terminationGracePeriodSeconds'] > 25  # preemption.deadline_s's default
