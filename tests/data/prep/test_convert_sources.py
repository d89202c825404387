"""Every input format gives the same eos-wrapped token stream; parts and workers do not change it."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
import zstandard

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert
from foundry.data.prep.hf_source import HFSource
from foundry.data.prep.sources import JsonSource, ParquetSource, TextSource
from tests.data.prep.test_convert import expected_stream, load_script, read_all

DOCS = [f'Record {i}: {"lorem ipsum " * (i % 9)}dolor sit amet, item {i * 7}.' for i in range(90)]


def write_jsonl(path, docs, field='text', opener=open):
    with opener(path, 'wt', encoding='utf-8') as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({'id': i, field: doc}) + '\n')


def stream_of(folder, seq=16):
    samples, _ = read_all(str(folder), max_seq_len=seq)
    assert all(len(s) == seq for s in samples)
    return sum(samples, [])


def test_jsonl_gz_zst_and_json_array_read_as_one_sorted_stream(tiny_tokenizer, tmp_path):
    src = tmp_path / 'in'
    src.mkdir()
    write_jsonl(src / 'a.jsonl', DOCS[:20])
    write_jsonl(src / 'b.jsonl.gz', DOCS[20:40], opener=gzip.open)
    with open(src / 'c.jsonl.zst', 'wb') as raw:
        with zstandard.ZstdCompressor().stream_writer(raw) as f:
            f.write(''.join(json.dumps({'text': d}) + '\n' for d in DOCS[40:60]).encode())
    (src / 'd.json').write_text(json.dumps([{'text': d} for d in DOCS[60:]]))
    (src / 'notes.csv').write_text('ignored')
    summary = convert(JsonSource(str(src)), str(tmp_path / 'out'), tiny_tokenizer, 16,
                      progress=False, verbose=False)
    assert summary.documents == len(DOCS)
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert stream_of(tmp_path / 'out') == stream[:len(stream) // 16 * 16]


def test_parquet_source_matches_jsonl(tiny_tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / 'pq').mkdir()
    pq.write_table(pa.table({'content': DOCS[:50], 'n': list(range(50))}),
                   tmp_path / 'pq' / '0.parquet', row_group_size=7)
    pq.write_table(pa.table({'content': DOCS[50:], 'n': list(range(40))}),
                   tmp_path / 'pq' / '1.parquet')
    convert(ParquetSource(str(tmp_path / 'pq'), 'content'), str(tmp_path / 'out'),
            tiny_tokenizer, 16, progress=False, verbose=False)
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert stream_of(tmp_path / 'out') == stream[:len(stream) // 16 * 16]

    with pytest.raises(DataError, match=r"0\.parquet: no column 'text' \(its columns: content, n\)"):
        convert(ParquetSource(str(tmp_path / 'pq')), str(tmp_path / 'bad'), tiny_tokenizer, 16,
                progress=False, verbose=False)


@pytest.fixture
def offline_hf(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_DATASETS_OFFLINE', '1')
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf-home'))


def test_hf_dataset_from_local_files_one_part_per_file(tiny_tokenizer, tmp_path,
                                                                 offline_hf):
    folder = tmp_path / 'hf'
    folder.mkdir()
    for i in range(3):
        write_jsonl(folder / f'shard-{i}.jsonl', DOCS[i * 30:(i + 1) * 30], field='content')
    source = HFSource('json', data_files=sorted(str(p) for p in folder.iterdir()),
                      text_field='content')
    assert len(source.parts()) == 3
    summary = convert(source, str(tmp_path / 'out'), tiny_tokenizer, 16, progress=False,
                      verbose=False)
    assert summary.parts == 3 and summary.documents == 90
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert stream_of(tmp_path / 'out') == stream[:len(stream) // 16 * 16]

    # A local folder works as --dataset too; a wrong field names the fields that exist.
    with pytest.raises(DataError, match=r"no field 'text' \(its fields: .*content"):
        HFSource(str(folder)).parts()


def datasets_files(path, name, split, data_files=None):
    import datasets

    builder = datasets.load_dataset_builder(path, name, data_files=data_files)
    return [str(f) for f in builder.config.data_files[split]]


def test_local_layouts_resolve_to_datasets_file_lists(tmp_path, offline_hf, monkeypatch):
    """hf_local.py finds the files of plain local layouts without importing datasets: the same list
    datasets resolves, in its order; anything else is left to datasets (None)."""
    from foundry.data.prep.hf_local import local_split_files

    folder = tmp_path / 'multi'
    for sub in ('en', 'de'):
        (folder / sub).mkdir(parents=True)
        for i in (2, 0, 1, 10):
            write_jsonl(folder / sub / f'part-{i}.jsonl', DOCS[:3])
    (folder / 'en' / 'valid.jsonl').write_text('{"text": "x"}\n')
    (folder / 'README.md').write_text('---\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n'
                                      '  - split: train\n    path: ["en/part-1*.jsonl", "en/part-[02].jsonl"]\n'
                                      '  - split: validation\n    path: en/valid.jsonl\n'
                                      '- config_name: de\n  data_files: "de/*.jsonl"\n---\n# a dataset\n')
    cases = [(str(folder), 'en', 'train', None), (str(folder), None, 'train', None),
             (str(folder), 'en', 'validation', None), (str(folder), 'de', 'train', None),
             ('json', None, 'train', [str(folder / 'de' / 'part-1.jsonl'), str(folder / 'en' / 'part-*.jsonl')])]
    for path, name, split, data_files in cases:
        kind, files = local_split_files(path, name, split, data_files)
        assert kind == 'json' and files == datasets_files(path, name, split, data_files), (path, name, split)
    # Left to datasets: no README configs, a config with builder options, a missing split or file.
    plain = tmp_path / 'plain'
    plain.mkdir()
    write_jsonl(plain / 'train.jsonl', DOCS[:3])
    assert local_split_files(str(plain), None, 'train', None) is None
    (plain / 'README.md').write_text('---\nconfigs:\n- config_name: x\n  data_files: "*.jsonl"\n  field: data\n---\n')
    assert local_split_files(str(plain), 'x', 'train', None) is None
    assert local_split_files(str(folder), 'de', 'test', None) is None
    assert local_split_files('json', None, 'train', [str(tmp_path / 'missing-*.jsonl')]) is None


def test_hf_local_dataset_is_read_by_foundrys_readers_with_the_streamed_stream(tiny_tokenizer, tmp_path,
                                                                             offline_hf, monkeypatch):
    """A local folder in allenai/c4's layout (README configs, gzipped JSON Lines shards): datasets resolves
    the split's files, foundry's JSON reader reads them; the same stream as datasets' streaming reader,
    which still reads what foundry's readers do not (here: a csv dataset)."""
    folder = tmp_path / 'c4'
    (folder / 'en').mkdir(parents=True)
    (folder / 'README.md').write_text('---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n'
                                      '    path: en/c4-train.*.json.gz\n---\n')
    for i in range(2):
        write_jsonl(folder / 'en' / f'c4-train.{i:05d}-of-00002.json.gz', DOCS[i * 45:(i + 1) * 45], opener=gzip.open)
    source = HFSource(str(folder), 'en')
    kind, files = source.local_files()
    assert kind == 'json' and [os.path.basename(f) for f in files] == [
        'c4-train.00000-of-00002.json.gz', 'c4-train.00001-of-00002.json.gz']
    assert files == datasets_files(str(folder), 'en', 'train')  # found without importing datasets, the same list
    convert(source, str(tmp_path / 'fast'), tiny_tokenizer, 16, progress=False, verbose=False)
    monkeypatch.setattr(HFSource, 'local_files', lambda self: None)  # what datasets' streaming reader gives
    convert(HFSource(str(folder), 'en'), str(tmp_path / 'streamed'), tiny_tokenizer, 16, progress=False,
            verbose=False)
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert stream_of(tmp_path / 'fast') == stream_of(tmp_path / 'streamed') == stream[:len(stream) // 16 * 16]
    monkeypatch.undo()

    (tmp_path / 'data.csv').write_text('text\n' + ''.join(f'"{d}"\n' for d in DOCS))
    csv = HFSource('csv', data_files=str(tmp_path / 'data.csv'))
    assert csv.local_files() is None
    convert(csv, str(tmp_path / 'csv'), tiny_tokenizer, 16, progress=False, verbose=False)
    assert stream_of(tmp_path / 'csv') == stream[:len(stream) // 16 * 16]


def test_hf_cli_writes_each_split(tiny_tokenizer_path, tiny_tokenizer, tmp_path, offline_hf):
    folder = tmp_path / 'hf'
    folder.mkdir()
    write_jsonl(folder / 'data.jsonl', DOCS)
    main = load_script('convert_dataset_hf.py').main
    assert main(['--dataset', 'json', '--data_files', str(folder / 'data.jsonl'), '--splits',
                 'train', '--out_root', str(tmp_path / 'out'), '--concat_tokens', '16',
                 '--tokenizer', tiny_tokenizer_path, '--no_progress']) == 0
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert stream_of(tmp_path / 'out' / 'train') == stream[:len(stream) // 16 * 16]


def test_hf_hub_name_without_network_is_a_clear_error(tmp_path, offline_hf):
    with pytest.raises(DataError, match="could not load Hugging Face dataset 'allenai/c4'"):
        HFSource('allenai/c4', 'en').parts()


def test_big_file_split_into_byte_range_parts_gives_the_same_stream(tiny_tokenizer, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr('foundry.data.prep.sources.MIN_RANGE_BYTES', 1)
    write_jsonl(tmp_path / 'big.jsonl', DOCS * 3)
    size = os.path.getsize(tmp_path / 'big.jsonl')
    one = convert(JsonSource(str(tmp_path / 'big.jsonl')), str(tmp_path / 'one'), tiny_tokenizer,
                  16, progress=False, verbose=False)
    many = convert(JsonSource(str(tmp_path / 'big.jsonl'), part_bytes=size // 7 + 1),
                   str(tmp_path / 'many'), tiny_tokenizer, 16, progress=False, verbose=False)
    assert one.parts == 1 and many.parts == 7
    assert many.documents == one.documents == 3 * len(DOCS)
    # The carry between parts keeps samples identical to a single pass.
    assert stream_of(tmp_path / 'many') == stream_of(tmp_path / 'one')
    assert (many.samples, many.tokens, many.dropped_tokens) == \
        (one.samples, one.tokens, one.dropped_tokens)


def test_worker_processes_write_identical_shards(tiny_tokenizer, tmp_path):
    src = tmp_path / 'in'
    src.mkdir()
    for i in range(4):
        write_jsonl(src / f'{i}.jsonl', DOCS[i::4])
    a = convert(JsonSource(str(src), part_bytes=2000), str(tmp_path / 'threads'),
                tiny_tokenizer, 16, workers=0, progress=False, verbose=False)
    b = convert(JsonSource(str(src), part_bytes=2000), str(tmp_path / 'procs'), tiny_tokenizer,
                16, workers=2, progress=False, verbose=False)
    assert a.workers == 0 and b.workers == 2 and a.parts == b.parts > 1
    for root, _, files in os.walk(tmp_path / 'threads'):
        for name in files:
            if name.endswith('.mds'):
                rel = os.path.relpath(os.path.join(root, name), tmp_path / 'threads')
                assert (tmp_path / 'threads' / rel).read_bytes() == \
                    (tmp_path / 'procs' / rel).read_bytes()
    assert json.loads((tmp_path / 'threads' / 'index.json').read_text()) == \
        json.loads((tmp_path / 'procs' / 'index.json').read_text())


def test_worker_errors_name_file_and_line(tiny_tokenizer, tmp_path):
    (tmp_path / 'x.jsonl').write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: record has no 'text' field \(its fields: "
                                        r"body\)"):
        convert(JsonSource(str(tmp_path / 'x.jsonl')), str(tmp_path / 'out'), tiny_tokenizer, 4,
                workers=2, progress=False, verbose=False)
    assert not (tmp_path / 'out').exists()


def test_invalid_utf8_is_replaced_counted_and_located(tiny_tokenizer, tmp_path):
    folder = tmp_path / 'texts'
    folder.mkdir()
    (folder / 'good.txt').write_text('plain text ' * 20)
    (folder / 'bad.txt').write_bytes(b'caf\xe9 au lait ' * 3 + b'and \xff\xfe end ' * 10)
    with pytest.warns(UserWarning, match='invalid UTF-8 in 1 input file'):
        summary = convert(TextSource(str(folder)), str(tmp_path / 'out'), tiny_tokenizer, 8,
                          progress=False, verbose=False)
    bad = str(folder / 'bad.txt')
    assert summary.invalid_utf8 == {bad: [23, 3]}
    assert f'invalid UTF-8: 23 byte sequences replaced by U+FFFD in 1 file(s): {bad}: 23 (first '\
           'at byte 3)' in str(summary)
    stream = (tiny_tokenizer('caf\ufffd au lait ' * 3 + 'and \ufffd\ufffd end ' * 10,
                             add_special_tokens=False)['input_ids'] + [0] +
              tiny_tokenizer('plain text ' * 20, add_special_tokens=False)['input_ids'] + [0])
    assert stream_of(tmp_path / 'out', 8) == stream[:len(stream) // 8 * 8]

    with pytest.raises(DataError, match=r'bad\.txt: byte 3: invalid UTF-8'):
        convert(TextSource(str(folder)), str(tmp_path / 'strict'), tiny_tokenizer, 8,
                strict_utf8=True, progress=False, verbose=False)


def test_invalid_utf8_in_jsonl_reports_byte_offset_and_line(tiny_tokenizer, tmp_path):
    data = b'{"text": "fine"}\n{"text": "bro\xc3 ken"}\n'
    (tmp_path / 'd.jsonl').write_bytes(data)
    with pytest.warns(UserWarning, match='invalid UTF-8 in 1 input file'):
        summary = convert(JsonSource(str(tmp_path / 'd.jsonl')), str(tmp_path / 'out'),
                          tiny_tokenizer, 2, progress=False, verbose=False)
    assert summary.invalid_utf8 == {str(tmp_path / 'd.jsonl'): [1, data.index(b'\xc3')]}
    with pytest.raises(DataError, match=r'd\.jsonl: byte 30 \(line 2\): invalid UTF-8'):
        convert(JsonSource(str(tmp_path / 'd.jsonl')), str(tmp_path / 'strict'), tiny_tokenizer,
                2, strict_utf8=True, progress=False, verbose=False)


def test_lone_surrogate_escapes_are_counted_not_dropped(tiny_tokenizer, tmp_path):
    (tmp_path / 's.jsonl').write_text('{"text": "half \\udc80 pair"}\n{"text": "ok ok ok"}\n')
    with pytest.warns(UserWarning, match='invalid UTF-8 in 1 input file'):
        summary = convert(JsonSource(str(tmp_path / 's.jsonl')), str(tmp_path / 'out'),
                          tiny_tokenizer, 2, progress=False, verbose=False)
    assert summary.documents == 2 and summary.invalid_utf8_count == 1


def test_empty_inputs(tiny_tokenizer, tmp_path):
    (tmp_path / 'blank.jsonl').write_text('\n\n   \n')
    with pytest.raises(DataError, match='no documents to convert: the input is empty'):
        convert(JsonSource(str(tmp_path / 'blank.jsonl')), str(tmp_path / 'out'), tiny_tokenizer,
                4, progress=False, verbose=False)
    assert not (tmp_path / 'out').exists()
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='no JSON / JSON Lines files'):
        JsonSource(str(tmp_path / 'empty')).parts()


def test_uint32_tokens_for_vocabularies_over_65536(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f'w{i}': i for i in range(70_000)}
    vocab['<|endoftext|>'] = 70_000
    tok = Tokenizer(models.WordLevel(vocab, unk_token='w0'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / 'plain.json'))
    tok.add_special_tokens(['<|endoftext|>'])
    tok.save(str(tmp_path / 'tok.json'))
    from foundry.data.tokenizer import build_tokenizer

    # Without <|endoftext|> registered as a special token its text splits into several tokens,
    # so no single id could mark document ends: refused before anything is written.
    plain = build_tokenizer(str(tmp_path / 'plain.json'))
    with pytest.raises(DataError, match=r"eos_text '<\|endoftext\|>' tokenizes to 3 tokens "):
        convert(JsonSource(str(_jsonl(tmp_path, ['w1 w2']))), str(tmp_path / 'x'), plain, 16,
                progress=False, verbose=False)
    assert not (tmp_path / 'x').exists()

    tokenizer = build_tokenizer(str(tmp_path / 'tok.json'))
    docs = [' '.join(f'w{(i * 997 + j) % 70_000}' for j in range(30)) for i in range(10)]
    convert(JsonSource(str(_jsonl(tmp_path, docs))), str(tmp_path / 'out'), tokenizer, 16,
            progress=False, verbose=False)
    index = json.loads((tmp_path / 'out' / 'index.json').read_text())
    assert index['shards'][0]['column_encodings'] == ['ndarray:uint32']
    got = stream_of(tmp_path / 'out')
    assert max(got) > 65_535
    stream = expected_stream(tokenizer, docs, eos=(70_000,))
    assert got == stream[:len(stream) // 16 * 16]
    assert np.array(got).min() >= 0


def _jsonl(tmp_path, docs):
    path = tmp_path / 'docs.jsonl'
    write_jsonl(path, docs)
    return path
