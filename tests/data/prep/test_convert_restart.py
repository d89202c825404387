"""An interrupted conversion, rerun, finishes without redoing finished parts and matches a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert
from foundry.data.prep.sources import JsonSource
from foundry.data.stream.text_dataset import StreamingTextDataset
from tests.data.prep.test_convert import REPO, load_script
from tests.data.prep.test_convert_sources import DOCS, write_jsonl


def make_input(folder, bad_file=None, only='abcd'):
    folder.mkdir(exist_ok=True)
    for i, name in enumerate('abcd'):
        if name not in only:
            continue
        docs = DOCS[i::4]
        write_jsonl(folder / f'{name}.jsonl', docs)
        if name == bad_file:
            with open(folder / f'{name}.jsonl', 'a') as f:
                f.write('{"body": "this record has no text field"}\n')


def shard_files(root):
    """{relative path: bytes} of every shard and index under root (the dataset's content)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith('.mds') or name == 'index.json':
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, root)] = open(path, 'rb').read()
    return out


def run(folder, out, tokenizer, **kwargs):
    # part_bytes=1: one part per input file.
    return convert(JsonSource(str(folder), part_bytes=1), str(out), tokenizer, 16,
                   progress=False, verbose=False, **kwargs)


@pytest.fixture
def reference(tmp_path, tiny_tokenizer):
    make_input(tmp_path / 'clean')
    run(tmp_path / 'clean', tmp_path / 'reference', tiny_tokenizer)
    return shard_files(tmp_path / 'reference')


@pytest.mark.parametrize('workers', [0, 2])
def test_failed_part_keeps_finished_parts_and_rerun_resumes(tmp_path, tiny_tokenizer, reference,
                                                            workers):
    folder, out = tmp_path / 'in', tmp_path / 'out'
    make_input(folder, bad_file='c')
    with pytest.raises(DataError, match=r'c\.jsonl:\d+: record has no .text. field.*2 of 4 parts '
                                        r'are complete and kept'):
        run(folder, out, tiny_tokenizer, workers=workers)
    assert (out / 'part-00001' / 'done.json').exists()
    assert not (out / 'part-00002').exists()
    assert not (out / 'index.json').exists()  # readers cannot mistake this for a dataset

    make_input(folder, only='c')  # fix the bad file
    summary = run(folder, out, tiny_tokenizer, workers=workers)
    assert summary.parts == 4 and summary.parts_reused == 2
    assert summary.documents == len(DOCS)
    assert shard_files(out) == reference


def test_changed_input_redoes_its_part_and_the_ones_after(tmp_path, tiny_tokenizer):
    folder, out = tmp_path / 'in', tmp_path / 'out'
    make_input(folder)
    run(folder, out, tiny_tokenizer)
    write_jsonl(folder / 'c.jsonl', ['a brand new document ' * 5] * 3)
    summary = run(folder, out, tiny_tokenizer)
    assert summary.parts_reused == 2  # a and b kept; c and d redone (d follows c's carry)
    run(folder, tmp_path / 'fresh', tiny_tokenizer)
    assert shard_files(out) == shard_files(tmp_path / 'fresh')


def test_rerun_of_a_complete_conversion_does_nothing(tmp_path, tiny_tokenizer_path, capsys):
    folder = tmp_path / 'in'
    make_input(folder)
    main = load_script('convert_dataset_json.py').main
    args = ['--path', str(folder), '--out_root', str(tmp_path / 'out'), '--concat_tokens', '16',
            '--tokenizer', tiny_tokenizer_path, '--no_progress', '--part_size', '1']
    assert main(args) == 0
    first = capsys.readouterr().out
    before = shard_files(tmp_path / 'out')
    assert main(args) == 0
    second = capsys.readouterr().out
    assert 'already holds this complete conversion; nothing to do' in second
    wrote = [line.split(' to ')[0] for line in (first + second).splitlines() if line.startswith('wrote ')]
    assert first.startswith('encoder: ') and len(wrote) == 2 and wrote[0] == wrote[1]
    assert shard_files(tmp_path / 'out') == before

    # Other settings on the same output folder are refused, naming what differs.
    with pytest.raises(SystemExit):
        main([*args[:5], '8', *args[6:]])
    err = capsys.readouterr().err
    assert 'holds an unfinished or finished conversion made with different settings' in err
    assert 'concat_tokens: 16 -> 8' in err


GATED = r'''
import os, sys, time
from foundry.data.prep.convert import convert
from foundry.data.prep.sources import JsonSource
from foundry.data.tokenizer import build_tokenizer

folder, out, tok, gate = sys.argv[1:5]

class Gated(JsonSource):
    """Part 2 waits for a file that never appears, so the test can kill us mid-run."""
    def parts(self):
        parts = super().parts()
        original = parts[2].tasks
        def wait_then_read():
            while not os.path.exists(gate):
                time.sleep(0.05)
            yield from original()
        parts[2].tasks = wait_then_read
        return parts

convert(Gated(folder, part_bytes=1), out, build_tokenizer(tok), 16, workers=0, progress=False)
'''


def test_killed_conversion_resumes_and_no_reader_sees_a_partial_dataset(tmp_path,
                                                                         tiny_tokenizer_path,
                                                                         tiny_tokenizer,
                                                                         reference):
    folder, out = tmp_path / 'in', tmp_path / 'out'
    make_input(folder)
    script = tmp_path / 'gated.py'
    script.write_text(GATED)
    env = {**os.environ, 'PYTHONPATH': REPO}
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(out),
                             tiny_tokenizer_path, str(tmp_path / 'never')], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (out / 'part-00001' / 'done.json').exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, 'conversion did not reach part 2'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert not (out / 'index.json').exists()
    with pytest.raises(Exception, match='index.json'):
        StreamingTextDataset(local=str(out), max_seq_len=16, batch_size=1)

    main = load_script('convert_dataset_json.py').main
    assert main(['--path', str(folder), '--out_root', str(out), '--split', '',
                 '--concat_tokens', '16', '--tokenizer', tiny_tokenizer_path, '--no_progress',
                 '--part_size', '1']) == 0
    manifest = json.loads((out / 'conversion.json').read_text())
    assert manifest['complete'] and manifest['summary']['parts_reused'] == 2
    assert shard_files(out) == reference
