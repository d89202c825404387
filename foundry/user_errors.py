"""How a training process reports a mistake: one line, once, no traceback on the console.

Config and data errors are the same on every rank (each validates the same YAML), so only local
rank 0 prints them; the other ranks stay quiet. Composer's launcher shows local rank 0's stderr
live, kills the other ranks with SIGTERM once one exits, and prints the captured output of every
rank that exited non-zero on its own. So a quiet rank waits for that SIGTERM with the default
action (it then ends by the signal and the launcher prints nothing for it); under a launcher that
never sends one it exits with the same status after a grace period.

Runtime faults that no check before launch can see (a checkpoint of another shape, a logger
without credentials, an object store refusing a request) are turned into one line naming what to
fix by `runtime_fault`; the traceback goes to `{run_folder}/error-rank{N}.log`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Optional

USER_ERROR_EXIT = 2


def local_rank() -> int:
    try:
        return int(os.environ.get('LOCAL_RANK', '0'))
    except ValueError:
        return 0


def report_user_error(message: str, every_rank: bool = False, grace_seconds: float = 30.0) -> int:
    """Print `foundry: message` once per launch and return the exit status.

    Local rank 0 (or every rank, with `every_rank`) prints at once. The other ranks wait for the
    launcher's SIGTERM, which comes when local rank 0 exited with the same error; one that outlives
    the wait met the error alone (a shard only it reads, say), so it prints the line after all.
    """
    line = f'foundry: {" ".join(str(message).split())}'
    if not every_rank and local_rank() != 0 and 'LOCAL_RANK' in os.environ:
        wait_for_launcher(grace_seconds)
        print(line, file=sys.stderr, flush=True)
        return USER_ERROR_EXIT
    print(line, file=sys.stderr, flush=True)
    wait_for_launcher(grace_seconds)
    return USER_ERROR_EXIT


def wait_for_launcher(grace_seconds: float = 30.0) -> None:
    """On ranks other than local rank 0: give local rank 0 time to print and exit first.

    If this rank exited first, Composer's launcher would kill local rank 0 before its message is
    out and show only "Rank 1 crashed". With SIGTERM at its default action this rank ends quietly
    as soon as the launcher reacts to rank 0's exit.
    """
    if local_rank() == 0 or 'LOCAL_RANK' not in os.environ:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        time.sleep(0.1)


def write_traceback(exc: BaseException, run_folder: Optional[str]) -> Optional[str]:
    """The full traceback of `exc` in `{run_folder}/error-rank{RANK}.log`; its path, or None if unwritable."""
    if not run_folder:
        return None
    path = os.path.join(run_folder, f'error-rank{os.environ.get("RANK", "0")}.log')
    try:
        os.makedirs(run_folder, exist_ok=True)
        with open(path, 'a', encoding='utf-8') as f:
            f.write(f'--- {time.strftime("%Y-%m-%d %H:%M:%S")} pid {os.getpid()}\n')
            f.write(''.join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError:
        return None
    return path


def runtime_fault(exc: BaseException, cfg=None) -> Optional[str]:
    """One line for a fault met while starting or running, naming the key/file and the fix; None if unknown."""
    module = type(exc).__module__ or ''
    text = ' '.join(str(exc).split())
    if module.startswith('wandb'):
        return _wandb_fault(text)
    if module.startswith(('botocore', 'boto3', 's3transfer')):
        return _object_store_fault(exc, text)
    if type(exc).__name__ == 'UploadError' and module == 'foundry.checkpoint.store':
        return text  # already one line naming bucket, key and the local copies (foundry/checkpoint/uploads.py)
    if isinstance(exc, RuntimeError) and ('size mismatch' in text or 'shape' in text and 'mismatch' in text):
        where = getattr(cfg, 'load_path', None) or getattr(cfg, 'save_folder', None) or 'the checkpoint'
        first = text.split('size mismatch for ', 1)[-1].split('. ')[0][:300]
        return (f'checkpoint error: {where} holds tensors of another shape than this config\'s model ({first}); '
                f'load it with the model config it was trained with (its hf_meta/config.json), or point load_path '
                f'/ save_folder at a checkpoint of this model')
    return None


def _wandb_fault(text: str) -> str:
    lowered = text.lower()
    if 'api_key' in lowered or 'api key' in lowered or 'login' in lowered or 'authenticat' in lowered \
            or 'permission' in lowered or '401' in lowered:
        return ('config error: `loggers.wandb` cannot log in to Weights & Biases (' + text[:200] + '); run '
                '`wandb login` or set WANDB_API_KEY, or set WANDB_MODE=offline (sync later with `wandb sync`) or '
                'WANDB_MODE=disabled, or remove loggers.wandb')
    return (f'config error: `loggers.wandb` failed to start ({text[:300]}); check its project/entity and network, '
            f'or set WANDB_MODE=offline')


def _object_store_fault(exc: BaseException, text: str) -> str:
    name = type(exc).__name__
    response = getattr(exc, 'response', None) or {}
    code = (response.get('Error') or {}).get('Code') if isinstance(response, dict) else None
    if name in ('NoCredentialsError', 'PartialCredentialsError') or code in ('InvalidAccessKeyId',
                                                                             'SignatureDoesNotMatch'):
        fix = 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile) for this bucket'
    elif code in ('NoSuchBucket',):
        fix = 'the bucket does not exist: check the s3:// path (and S3_ENDPOINT_URL for non-AWS stores)'
    elif code in ('AccessDenied', '403'):
        fix = 'these credentials may not access it: check the bucket policy or use other credentials'
    elif name in ('EndpointConnectionError', 'ConnectTimeoutError', 'ReadTimeoutError'):
        fix = 'the store cannot be reached: check S3_ENDPOINT_URL and the network'
    else:
        fix = 'check the s3:// path, credentials and S3_ENDPOINT_URL'
    return f'object store error ({text[:300]}): {fix}'


def argparse_error(prog: str, message: str) -> None:
    """What foundry's command-line parsers print for a bad argument: one line, exit status 2."""
    print(f'{prog}: error: {" ".join(message.split())}; see {prog} --help', file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT)
