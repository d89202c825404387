"""Fixtures for the data-path tests: tokenizers and small MDS datasets written on the fly."""

from __future__ import annotations

import os

import pytest

NEOX_TOKENIZER = '/work/shared/tokenizers/gpt-neox-20b/tokenizer.json'

SAMPLE_TEXT = """The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
def add(a, b):
    return a + b
How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow.
class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y
""" * 20


@pytest.fixture(scope='session')
def neox_tokenizer_path() -> str:
    if not os.path.isfile(NEOX_TOKENIZER):
        pytest.skip(f'GPT-NeoX-20B tokenizer not present at {NEOX_TOKENIZER}')
    return NEOX_TOKENIZER


@pytest.fixture(scope='session')
def neox_tokenizer(neox_tokenizer_path):
    from foundry.data.tokenizer import build_tokenizer
    return build_tokenizer(neox_tokenizer_path)


@pytest.fixture(scope='session')
def tiny_tokenizer_path(tmp_path_factory) -> str:
    """A 400-token byte-level BPE trained in well under a second; always available."""
    from foundry.data.prep.demo_corpus import train_demo_tokenizer

    root = tmp_path_factory.mktemp('tiny_tok')
    text = root / 'train.txt'
    text.write_text(SAMPLE_TEXT, encoding='utf-8')
    return train_demo_tokenizer([str(text)], vocab_size=400, out_path=str(root / 'tokenizer.json'))


@pytest.fixture(scope='session')
def tiny_tokenizer(tiny_tokenizer_path):
    from foundry.data.tokenizer import build_tokenizer
    return build_tokenizer(tiny_tokenizer_path)


@pytest.fixture
def write_mds():
    """``write_mds(out, columns, samples)``: write raw MDS, e.g. to fake llm-foundry datasets."""
    from streaming import MDSWriter

    def write(out: str, columns: dict, samples: list[dict]) -> str:
        with MDSWriter(out=str(out), columns=columns) as writer:
            for sample in samples:
                writer.write(sample)
        return str(out)

    return write
