"""Our token shard writer produces exactly what streaming's MDSWriter writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from streaming import MDSWriter, StreamingDataset

from foundry.data.prep.mds_writer import TokenShardWriter
from foundry.data.tokenizer import TokenizerFile, build_tokenizer


def files(folder):
    return {name: open(os.path.join(folder, name), 'rb').read()
            for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize('dtype,lengths,compression', [
    ('uint16', [2048] * 40, None),
    ('uint32', [300] * 90 + [17], None),      # shape header: uint16 then uint8
    ('uint16', [100] * 120, 'zstd'),
    ('uint16', [64] * 400, 'gz:5'),
])
def test_identical_to_mdswriter(tmp_path, dtype, lengths, compression):
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 60000, n).astype(dtype) for n in lengths]
    ours = TokenShardWriter(str(tmp_path / 'ours'), dtype, compression, size_limit=20_000)
    for row in rows:
        ours.write(row)
    ours.finish()
    with MDSWriter(out=str(tmp_path / 'theirs'), columns={'tokens': f'ndarray:{dtype}'},
                   compression=compression, size_limit=20_000) as theirs:
        for row in rows:
            theirs.write({'tokens': row})
    ours, theirs = files(tmp_path / 'ours'), files(tmp_path / 'theirs')
    assert ours.keys() == theirs.keys() and ours['index.json'] == theirs['index.json']
    if compression and compression.startswith('gz'):  # gzip stamps the time in its header
        import gzip
        ours = {k: gzip.decompress(v) if k.endswith('.gz') else v for k, v in ours.items()}
        theirs = {k: gzip.decompress(v) if k.endswith('.gz') else v for k, v in theirs.items()}
    assert ours == theirs
    assert len(files(tmp_path / 'ours')) > 2  # several shards were cut
    ds = StreamingDataset(local=str(tmp_path / 'ours'), batch_size=1)
    assert all(np.array_equal(ds[i]['tokens'], row) for i, row in enumerate(rows))


def test_tokenizer_file_matches_build_tokenizer(tiny_tokenizer_path, neox_tokenizer_path):
    for path in (tiny_tokenizer_path, neox_tokenizer_path):
        light, full = TokenizerFile(path), build_tokenizer(path)
        for attr in ('eos_token', 'eos_token_id', 'bos_token', 'bos_token_id', 'pad_token_id'):
            assert getattr(light, attr) == getattr(full, attr), (path, attr)
        assert len(light) == len(full)
        text = 'def f(x):\n    return x  # café <|endoftext|>'
        assert light(text, add_special_tokens=False)['input_ids'] == \
            full(text, add_special_tokens=False)['input_ids']
