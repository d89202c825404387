"""name: finetuning end to end on real files: JSONL, Parquet, a folder, the `datasets` json builder,
and MDS written by data_prep/convert_finetuning_dataset.py (local and on a moto S3 endpoint);
the same batches from every source; config mistakes as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from foundry.data.errors import DataError
from foundry.data.prep.finetuning.cli import convert_main
from foundry.data.stream.text_loader import build_text_dataloader

ROWS = [{'prompt': f'Q{i}: add {i} and {i % 7}?\n', 'response': f'{i + i % 7}' + ' ok' * (i % 5)}
        for i in range(64)]
CHATS = [{'messages': [{'role': 'user', 'content': f'hello {i}'},
                       {'role': 'assistant', 'content': 'hi ' * (1 + i % 4)}]} for i in range(32)]


def write_jsonl(path, rows):
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return str(path)


def loader(tokenizer, dataset, batch=4, **loader_keys):
    cfg = {'name': 'finetuning', 'num_workers': 0, 'drop_last': False,
           'dataset': {'max_seq_len': 32, 'shuffle': False, **dataset}, **loader_keys}
    return build_text_dataloader(cfg, tokenizer, batch).dataloader


def all_rows(dl):
    """Each example's (input_ids, labels) as lists, read back from (possibly packed) batches."""
    out = []
    for batch in dl:
        for row in range(batch['input_ids'].shape[0]):
            seq, mask = batch['sequence_id'][row], batch['attention_mask'][row].bool()
            for k in seq[mask].unique().tolist():
                where = (seq == k) & mask
                out.append((batch['input_ids'][row][where].tolist(),
                            batch['labels'][row][where].tolist()))
    return sorted(out)


def test_every_source_gives_the_same_examples(tmp_path, tiny_tokenizer):
    jsonl = write_jsonl(tmp_path / 'train.jsonl', ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / 'rows.parquet')
    folder = tmp_path / 'folder'
    (folder / 'train').mkdir(parents=True)
    write_jsonl(folder / 'train' / 'a.jsonl', ROWS[:40])
    write_jsonl(folder / 'train' / 'b.jsonl', ROWS[40:])
    expected = all_rows(loader(tiny_tokenizer, {'hf_name': jsonl}))
    assert len(expected) == 64
    assert all(any(l != -100 for l in labels) for _, labels in expected)
    for source in ({'hf_name': str(tmp_path / 'rows.parquet')},
                   {'hf_name': str(folder), 'split': 'train'},
                   {'hf_name': str(tmp_path), 'split': 'train'},     # {split}.jsonl in a folder
                   {'hf_name': 'json', 'hf_kwargs': {'data_files': jsonl}}):  # datasets builder
        assert all_rows(loader(tiny_tokenizer, source)) == expected, source
    for ratio in (1.5, 'auto'):
        dl = loader(tiny_tokenizer, {'hf_name': jsonl, 'max_seq_len': 64, 'packing_ratio': ratio})
        packed = [ids for ids, _ in all_rows(dl)]
        waiting = [list(map(int, e['input_ids'])) for e in dl.collate_fn.waiting]
        assert sorted(packed + waiting) == [ids for ids, _ in expected]  # each once, unchanged
        assert len(waiting) < 64 // 8


def test_packed_loader_batches(tmp_path, tiny_tokenizer, caplog):
    jsonl = write_jsonl(tmp_path / 'chat.jsonl', CHATS)
    caplog.set_level('INFO', logger='foundry')
    dl = loader(tiny_tokenizer, {'hf_name': jsonl, 'packing_ratio': 'auto', 'max_seq_len': 192,
                                 'allow_pad_trimming': True}, batch=2, drop_last=True)
    text = caplog.text
    assert 'packing: 32 examples' in text and '(auto)' in text and 'without packing' in text
    batches = list(dl)
    assert all(b['input_ids'].shape[0] == 2 for b in batches)
    assert all(b['input_ids'].shape[1] <= 192 for b in batches)
    assert max(int(b['sequence_id'].max()) for b in batches) >= 2  # several examples in a row
    unpacked = list(loader(tiny_tokenizer, {'hf_name': jsonl, 'max_seq_len': 192}, batch=2,
                           drop_last=True))
    pad = lambda bs: 1 - sum(int(b['attention_mask'].sum()) for b in bs) / sum(  # noqa: E731
        b['attention_mask'].numel() for b in bs)
    assert pad(batches) < pad(unpacked)


def test_mds_converter_local_and_s3_stream_the_same_examples(tmp_path, tiny_tokenizer,
                                                             tiny_tokenizer_path, make_bucket,
                                                             capsys):
    jsonl = write_jsonl(tmp_path / 'chat.jsonl', CHATS + [{'prompt': 'p', 'response': 'r'}])
    expected = all_rows(loader(tiny_tokenizer, {'hf_name': jsonl, 'max_seq_len': 192}))
    bucket = make_bucket('ftmds')
    for out in (str(tmp_path / 'mds'), f'{bucket}/chat'):
        assert convert_main(['--dataset', jsonl, '--out_root', out, '--tokenizer',
                             tiny_tokenizer_path, '--max_seq_len', '192']) == 0
        assert 'wrote 33 examples' in capsys.readouterr().out
        source = {'remote': out, 'split': 'train', 'max_seq_len': 192}
        if out.startswith('s3://'):
            source['local'] = str(tmp_path / 'cache')
        assert all_rows(loader(tiny_tokenizer, source)) == expected
        dl = loader(tiny_tokenizer, {**source, 'packing_ratio': 2})
        packed = [ids for ids, _ in all_rows(dl)]
        waiting = [list(map(int, e['input_ids'])) for e in dl.collate_fn.waiting]
        assert sorted(packed + waiting) == [ids for ids, _ in expected]


def test_converter_bad_line_is_one_line(tmp_path, tiny_tokenizer_path, capsys):
    jsonl = write_jsonl(tmp_path / 'bad.jsonl', [ROWS[0], {'messages': [
        {'role': 'user', 'content': 'x'}, {'role': 'robot', 'content': 'y'}]}])
    with pytest.raises(SystemExit) as exit_:
        convert_main(['--dataset', jsonl, '--out_root', str(tmp_path / 'out'), '--tokenizer',
                      tiny_tokenizer_path, '--max_seq_len', '32'])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"convert_finetuning_dataset.py: error: {jsonl}:2: messages[1] has role 'robot'; roles "
        'are system, user, assistant.')
    assert not (tmp_path / 'out').exists()
    # the script is a thin wrapper around convert_main
    result = subprocess.run([sys.executable, 'data_prep/convert_finetuning_dataset.py',
                             '--dataset', jsonl], capture_output=True, text=True)
    assert result.returncode == 2 and 'required: --out_root' in result.stderr


@pytest.mark.parametrize('dataset, message', [
    ({'max_seq_len': 32}, 'needs exactly one source'),
    ({'hf_name': 'x.jsonl', 'local': 'y', 'max_seq_len': 32}, 'needs exactly one source'),
    ({'hf_name': 'x.jsonl'}, 'max_seq_len is required'),
    ({'hf_name': 'x.jsonl', 'max_seq_len': 32, 'packing_ratio': 0.5}, 'packing_ratio is 0.5'),
    ({'hf_name': 'x.jsonl', 'max_seq_len': 32, 'target_responses': 'first'},
     'target_responses is'),
    ({'hf_name': 'x.jsonl', 'max_seq_len': 32, 'target_prompts': 'length>10'},
     'target_prompts is'),
    ({'hf_name': 'x.jsonl', 'max_seq_len': 32, 'decoder_only_format': False}, 'encoder-decoder'),
    ({'hf_name': 'x.jsonl', 'max_seq_len': 32, 'packing_raito': 2},
     'did you mean `loader.dataset.packing_ratio`'),
])
def test_settings_errors(tiny_tokenizer, dataset, message):
    with pytest.raises(DataError, match=message):
        build_text_dataloader({'name': 'finetuning', 'dataset': dataset}, tiny_tokenizer, 2)


def test_config_layer_checks_finetuning_sections(tmp_path):
    from foundry.config.errors import ConfigError
    from foundry.config.sections import check_loader

    check_loader({'name': 'finetuning', 'dataset': {'hf_name': 'a.jsonl', 'max_seq_len': 8,
                                                     'packing_ratio': 'auto'}}, 'train_loader')
    with pytest.raises(ConfigError, match=r'train_loader\.dataset\.packing_ratio is'):
        check_loader({'name': 'finetuning', 'dataset': {'hf_name': 'a', 'max_seq_len': 8,
                                                         'packing_ratio': 'lots'}}, 'train_loader')
    with pytest.raises(ConfigError, match=r'train_loader\.dataset\.hf_nam'):
        check_loader({'name': 'finetuning', 'dataset': {'hf_nam': 'a', 'max_seq_len': 8}},
                     'train_loader')
