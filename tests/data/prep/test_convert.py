"""Conversion: documents -> eos-wrapped token stream -> fixed-length MDS samples, and the CLIs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from streaming import StreamingDataset

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert_documents, token_dtype_for
from foundry.data.prep.readers import iter_json_documents, iter_text_documents
from foundry.data.stream.text_dataset import StreamingTextDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DOCS = [f'Document number {i} says {"hello " * (i % 7)}and then ends.' for i in range(60)]


def expected_stream(tokenizer, docs, bos=(), eos=(0,)):
    stream = []
    for doc in docs:
        stream += list(bos) + tokenizer(doc, add_special_tokens=False)['input_ids'] + list(eos)
    return stream


def read_all(local, max_seq_len=10_000):
    ds = StreamingTextDataset(local=local, max_seq_len=max_seq_len, shuffle=False, batch_size=1)
    return [ds[i]['input_ids'].tolist() for i in range(len(ds))], ds


def test_round_trip_gives_the_concatenated_eos_wrapped_stream(tiny_tokenizer, tmp_path):
    out = str(tmp_path / 'mds')
    summary = convert_documents(DOCS, out, tiny_tokenizer, 16, progress=False, verbose=False)
    stream = expected_stream(tiny_tokenizer, DOCS)
    n = len(stream) // 16
    assert summary.documents == len(DOCS)
    assert summary.samples == n and summary.tokens == n * 16
    assert summary.dropped_tokens == len(stream) - n * 16
    assert summary.bytes > 0 and summary.dtype == 'uint16'

    samples, ds = read_all(out)
    assert all(len(s) == 16 for s in samples)
    assert sum(samples, []) == stream[:n * 16]

    # The iteration order (what training sees) is the same with shuffle off.
    iterated = [sample['input_ids'].tolist() for sample in ds]
    assert iterated == samples


def test_tokens_are_stored_as_uint16_ndarray(neox_tokenizer, tmp_path):
    out = str(tmp_path / 'mds')
    convert_documents(DOCS, out, neox_tokenizer, 32, progress=False, verbose=False)
    with open(os.path.join(out, 'index.json')) as f:
        index = json.load(f)
    assert index['shards'][0]['column_encodings'] == ['ndarray:uint16']
    raw = StreamingDataset(local=out, batch_size=1)[0]['tokens']
    assert raw.dtype == np.uint16 and raw.shape == (32,)
    samples, _ = read_all(out)
    assert sum(samples, []) == expected_stream(neox_tokenizer, DOCS)[:len(samples) * 32]


def test_dtype_choice_by_vocab_size():
    assert token_dtype_for(50277) == np.uint16
    assert token_dtype_for(65536) == np.uint16
    assert token_dtype_for(65537) == np.uint32
    assert token_dtype_for(128256) == np.uint32


def test_bos_text_and_compression(neox_tokenizer, tmp_path):
    out = str(tmp_path / 'mds')
    with pytest.warns(UserWarning, match='bos_token_id: 0'):
        convert_documents(DOCS, out, neox_tokenizer, 32, bos_text='<|endoftext|>', eos_text='',
                          compression='zstd', progress=False, verbose=False)
    with open(os.path.join(out, 'index.json')) as f:
        assert json.load(f)['shards'][0]['compression'] == 'zstd'
    samples, _ = read_all(out)
    stream = expected_stream(neox_tokenizer, DOCS, bos=(0,), eos=())
    assert sum(samples, []) == stream[:len(samples) * 32]


def test_no_wrap_starts_every_sample_at_a_document(tiny_tokenizer, tmp_path):
    docs = ['alpha ' * 30, 'beta ' * 30, 'gamma ' * 30]
    out = str(tmp_path / 'mds')
    summary = convert_documents(docs, out, tiny_tokenizer, 8, no_wrap=True, progress=False,
                                verbose=False)
    samples, _ = read_all(out)
    firsts = [tiny_tokenizer(d, add_special_tokens=False)['input_ids'][:8] for d in docs]
    assert samples == firsts
    assert summary.dropped_tokens > 0


def test_multi_token_eos_text_only_errors_when_boundaries_would_be_lost(neox_tokenizer, tmp_path):
    # Ends with the eos token: boundaries are still found, so it is accepted.
    convert_documents(DOCS, str(tmp_path / 'ok'), neox_tokenizer, 32, eos_text='\n<|endoftext|>',
                      progress=False, verbose=False)
    with pytest.raises(DataError, match='no single token marks where a document ends'):
        convert_documents(DOCS, str(tmp_path / 'bad'), neox_tokenizer, 32, eos_text='THE END',
                          progress=False, verbose=False)
    assert not os.path.exists(tmp_path / 'bad')


def test_single_token_eos_that_is_not_the_tokenizer_eos_warns(neox_tokenizer, tmp_path):
    with pytest.warns(UserWarning, match='eos_token_id'):
        convert_documents(DOCS, str(tmp_path / 'mds'), neox_tokenizer, 32, eos_text='<|padding|>',
                          progress=False, verbose=False)


def test_empty_input_is_a_clear_error(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match='input is empty'):
        convert_documents([], str(tmp_path / 'mds'), tiny_tokenizer, 16, progress=False)
    assert not os.path.exists(tmp_path / 'mds')


def test_too_little_text_for_one_sample(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match='no sample was written'):
        convert_documents(['hi'], str(tmp_path / 'mds'), tiny_tokenizer, 1000, progress=False)
    assert not os.path.exists(tmp_path / 'mds')


def test_non_empty_output_folder_is_refused(tiny_tokenizer, tmp_path):
    (tmp_path / 'mds').mkdir()
    (tmp_path / 'mds' / 'old').write_text('x')
    with pytest.raises(DataError, match='not empty'):
        convert_documents(DOCS, str(tmp_path / 'mds'), tiny_tokenizer, 16, progress=False)


def test_bad_arguments(tiny_tokenizer, tmp_path):
    with pytest.raises(DataError, match='concat_tokens'):
        convert_documents(DOCS, str(tmp_path / 'a'), tiny_tokenizer, 0)
    with pytest.raises(DataError, match='unknown compression'):
        convert_documents(DOCS, str(tmp_path / 'b'), tiny_tokenizer, 8, compression='zip9')


def test_json_readers(tmp_path):
    (tmp_path / 'b.jsonl').write_text('{"text": "two"}\n\n{"text": "three"}\n')
    with gzip.open(tmp_path / 'c.jsonl.gz', 'wt') as f:
        f.write('{"text": "four", "meta": 1}\n')
    (tmp_path / 'a.json').write_text('[{"text": "zero"}, {"text": "one"}]')
    (tmp_path / 'ignored.csv').write_text('text\nnope\n')
    assert list(iter_json_documents(str(tmp_path))) == ['zero', 'one', 'two', 'three', 'four']


def test_missing_text_field_names_file_and_line(tmp_path):
    path = tmp_path / 'data.jsonl'
    path.write_text('{"text": "fine"}\n{"body": "oops"}\n')
    with pytest.raises(DataError, match=r'data\.jsonl:2: record has no .text. field.*body'):
        list(iter_json_documents(str(path)))


def test_invalid_json_line(tmp_path):
    (tmp_path / 'x.jsonl').write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r'x\.jsonl:2: invalid JSON'):
        list(iter_json_documents(str(tmp_path)))


def test_text_folder_reader_is_sorted_and_recursive(tmp_path):
    (tmp_path / 'sub').mkdir()
    (tmp_path / 'sub' / 'b.txt').write_text('bee')
    (tmp_path / 'a.txt').write_text('ay')
    (tmp_path / 'notes.md').write_text('skip me')
    assert list(iter_text_documents(str(tmp_path))) == ['ay', 'bee']
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'empty' / 'notes.md').write_text('skip me')
    with pytest.raises(DataError, match=r'no text files \(\.txt\)'):
        list(iter_text_documents(str(tmp_path / 'empty')))


def test_missing_input_path(tmp_path):
    with pytest.raises(DataError, match='does not exist'):
        list(iter_json_documents(str(tmp_path / 'nope')))


def run_script(script, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, 'data_prep', script), *args],
                          capture_output=True, text=True, timeout=120)


def test_json_cli_end_to_end(tiny_tokenizer_path, tiny_tokenizer, tmp_path):
    data = tmp_path / 'in.jsonl'
    data.write_text(''.join(json.dumps({'text': d}) + '\n' for d in DOCS))
    out = tmp_path / 'out'
    proc = run_script('convert_dataset_json.py', '--path', str(data), '--out_root', str(out),
                      '--split', 'train', '--concat_tokens', '16', '--tokenizer',
                      tiny_tokenizer_path, '--compression', 'zstd', '--no_progress')
    assert proc.returncode == 0, proc.stderr
    assert 'wrote' in proc.stdout
    samples, _ = read_all(str(out / 'train'))
    assert sum(samples, []) == expected_stream(tiny_tokenizer, DOCS)[:len(samples) * 16]


def test_json_cli_bad_flag_is_one_line(tmp_path):
    proc = run_script('convert_dataset_json.py', '--pth', 'x', '--out_root', str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and '--pth' in lines[0] and '--path' in lines[0]


def load_script(name):
    """Import a data_prep script as a module, to call its main() in-process (fast)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'data_prep', name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_json_cli_bad_record_is_one_line(tiny_tokenizer_path, tmp_path, capsys):
    data = tmp_path / 'in.jsonl'
    data.write_text('{"text": "a"}\n{"content": "b"}\n')
    main = load_script('convert_dataset_json.py').main
    with pytest.raises(SystemExit) as exit_info:
        main(['--path', str(data), '--out_root', str(tmp_path / 'out'), '--concat_tokens', '4',
              '--tokenizer', tiny_tokenizer_path, '--no_progress'])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and 'in.jsonl:2' in lines[0] and '--text_field' in lines[0]
    assert not (tmp_path / 'out' / 'train').exists()


def test_text_cli_end_to_end(tiny_tokenizer_path, tmp_path):
    folder = tmp_path / 'texts'
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f'{i:03d}.txt').write_text(doc)
    main = load_script('convert_text_to_mds.py').main
    assert main(['--path', str(folder), '--out_root', str(tmp_path / 'out'), '--concat_tokens',
                 '16', '--tokenizer', tiny_tokenizer_path, '--no_progress']) == 0
    # No --split: like llm-foundry's script, it writes to out_root itself.
    assert (tmp_path / 'out' / 'index.json').exists()
