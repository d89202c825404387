"""A foundry run never removes the shared memory of another program that took its prefix number.

The scenario: a foundry run on a machine goes away (it ends; or it is SIGKILLed and another program
clears its shared memory, as streaming's ``clean_stale_shared_memory()`` does); a plain
mosaicml-streaming reader takes the same prefix and stays alive; then a new foundry run starts. The
reader's segments must be untouched (same inodes) and it must read to the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest

from foundry.data.stream import shm_guard
from tests.data.prep.test_convert import REPO, expected_stream
from tests.data.stream.test_streaming import DOCS, dataset, private_tmp, remote  # noqa: F401  (fixtures)

# A foundry run: registers, waits for a line on stdin, then either reads everything and ends normally
# (atexit runs: foundry's release, streaming's unlink) or is SIGKILLed with its process group (no cleanup
# of any kind, as when a job's cgroup is OOM-killed or a node is preempted).
FOUNDRY_RUN = r'''
import os, signal, sys
from foundry.data.stream.text_dataset import StreamingTextDataset
ds = StreamingTextDataset(remote=sys.argv[1], local=sys.argv[2], max_seq_len=16, batch_size=1, shuffle=False)
print(ds._shm_prefix_int, flush=True)
sys.stdin.readline()
if sys.argv[3] == 'die':
    os.killpg(os.getpgid(0), signal.SIGKILL)
print(sum(1 for _ in ds), flush=True)
'''

# A program that is not foundry, with two StreamingDatasets (two local folders): it registers them, reads
# half of each, waits for a line on stdin, and reads both to the end.
PLAIN_READER = r'''
import sys
import numpy as np
from streaming import StreamingDataset
datasets = [StreamingDataset(remote=sys.argv[1], local=local, batch_size=1, shuffle=False) for local in sys.argv[2:]]
print(*[ds._shm_prefix_int for ds in datasets], flush=True)
ids = [[] for _ in datasets]
for ds, out in zip(datasets, ids):
    out += [int(t) for i in range(len(ds) // 2) for t in np.asarray(ds[i]['tokens'])]
print('half', flush=True)
sys.stdin.readline()
for ds, out in zip(datasets, ids):
    out += [int(t) for i in range(len(ds) // 2, len(ds)) for t in np.asarray(ds[i]['tokens'])]
    assert sum(1 for _ in ds) == len(ds)  # an epoch through the iterator too: new segments under the prefix
print(*[' '.join(map(str, out)) for out in ids], sep='\n', flush=True)
'''


def _segments(prefix: int) -> dict[str, int]:
    out = {}
    for name in os.listdir('/dev/shm'):
        if name.startswith(f'{prefix:06d}_'):
            out[name] = os.stat(f'/dev/shm/{name}').st_ino
    return out


def _spawn(script: str, *args: str, tmpdir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, 'PYTHONPATH': REPO, 'TMPDIR': tmpdir})


def test_new_run_leaves_plain_readers_on_old_runs_prefixes_alone(remote, tmp_path, tiny_tokenizer,
                                                                 private_tmp):  # noqa: F811
    tmp = tempfile.gettempdir()  # private_tmp: owner files and filelocks of this test only
    # Two foundry runs at once; one ends normally, the other is SIGKILLed. Both are registered before
    # either goes (a run registering after the kill would clean the killed run's prefix itself).
    ended = _spawn(FOUNDRY_RUN, remote, str(tmp_path / 'ended-cache'), 'end', tmpdir=tmp)
    killed = _spawn(FOUNDRY_RUN, remote, str(tmp_path / 'killed-cache'), 'die', tmpdir=tmp)
    p_ended, p_killed = int(ended.stdout.readline()), int(killed.stdout.readline())
    _, err = killed.communicate('go\n', timeout=60)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    _, err = ended.communicate('go\n', timeout=120)
    assert ended.returncode == 0, err[-2000:]

    # The run that ended left nothing: no memory, no owner file, no filelocks keeping the number taken.
    assert _segments(p_ended) == {}
    assert not os.path.exists(shm_guard._owner_path(p_ended))
    assert not [n for n in os.listdir(tmp) if n.startswith(f'{p_ended:06d}_')]
    # The killed one left its memory and an unlocked owner file. Another program clears that prefix, as
    # streaming's clean_stale_shared_memory() (llm-foundry calls it at start) does for every prefix.
    assert shm_guard.prefix_in_use(p_killed) is False
    for name in _segments(p_killed):
        os.unlink(f'/dev/shm/{name}')
    assert os.path.exists(shm_guard._owner_path(p_killed))

    # A plain streaming program, with its own temp folder (another container on this host's /dev/shm,
    # another user), takes both numbers, reads half of each dataset and waits.
    other_tmp = tmp_path / 'reader-tmp'
    other_tmp.mkdir()
    reader = _spawn(PLAIN_READER, remote, str(tmp_path / 'reader-a'), str(tmp_path / 'reader-b'), tmpdir=str(other_tmp))
    try:
        taken = [int(p) for p in reader.stdout.readline().split()]
        assert sorted(taken) == sorted([p_ended, p_killed]), (
            f'the reader took prefixes {taken}, not {p_ended} and {p_killed} (did another process on this machine '
            'free a lower one meanwhile?)')
        assert reader.stdout.readline().strip() == 'half'
        theirs = {prefix: _segments(prefix) for prefix in taken}
        assert all(f'{prefix:06d}_locals' in theirs[prefix] for prefix in taken)
        assert shm_guard.prefix_in_use(p_killed) is None, 'the dead run\'s owner file no longer claims the prefix'

        ours = dataset(remote, tmp_path / 'new-run-cache')  # a new foundry run: its registration cleans up
        assert ours._shm_prefix_int not in taken
        for prefix, segments in theirs.items():
            assert _segments(prefix) == segments, f'the new run touched the reader\'s shared memory (prefix {prefix})'
        assert not os.path.exists(shm_guard._owner_path(p_killed)), 'the stale owner file is cleaned up'

        out, err = reader.communicate('go\n', timeout=120)
        assert reader.returncode == 0, err[-2000:]
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    stream = expected_stream(tiny_tokenizer, DOCS)
    read = [list(map(int, line.split())) for line in out.splitlines()]
    assert read == [stream[:len(stream) // 16 * 16]] * 2, 'the reader kept reading its own data'
