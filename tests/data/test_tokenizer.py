"""build_tokenizer: tokenizer.json files, saved directories, and clear errors for bad paths."""

from __future__ import annotations

import shutil

import pytest

from foundry.data.errors import DataError
from foundry.data.tokenizer import build_tokenizer, looks_like_local_path


def test_neox_tokenizer_json_file(neox_tokenizer_path):
    tok = build_tokenizer(neox_tokenizer_path, {'model_max_length': 2048})
    assert len(tok) == 50277
    assert tok.eos_token == '<|endoftext|>' and tok.eos_token_id == 0
    assert tok.bos_token_id == 0
    assert tok.pad_token_id == tok.eos_token_id  # NeoX defines no pad
    assert tok.model_max_length == 2048
    ids = tok('hello world', add_special_tokens=False)['input_ids']
    assert tok.decode(ids) == 'hello world'


def test_kwargs_override_guessed_roles(neox_tokenizer_path):
    tok = build_tokenizer(neox_tokenizer_path, {'pad_token': '<|padding|>'})
    assert tok.pad_token_id == 1
    assert tok.eos_token_id == 0


def test_saved_directory_roundtrip(neox_tokenizer, tmp_path):
    neox_tokenizer.save_pretrained(tmp_path / 'saved')
    tok = build_tokenizer(str(tmp_path / 'saved'))
    assert len(tok) == len(neox_tokenizer)
    assert tok.eos_token_id == 0 and tok.pad_token_id == 0


def test_directory_with_only_tokenizer_json(tiny_tokenizer_path, tmp_path):
    shutil.copy(tiny_tokenizer_path, tmp_path / 'tokenizer.json')
    tok = build_tokenizer(str(tmp_path))
    assert tok.eos_token == '<|endoftext|>' and tok.eos_token_id == 0
    assert tok.pad_token_id == 0


@pytest.mark.parametrize('name', ['./missing/tokenizer.json', '/nonexistent/dir', 'a/b/c',
                                  'tok.json', '~/nope-foundry-tokenizer'])
def test_missing_local_path_is_a_clear_error(name):
    with pytest.raises(DataError, match='does not exist') as info:
        build_tokenizer(name)
    assert name in str(info.value)


def test_hub_names_are_not_mistaken_for_paths():
    assert not looks_like_local_path('EleutherAI/gpt-neox-20b')
    assert not looks_like_local_path('gpt2')
    assert looks_like_local_path('./gpt2')
    assert looks_like_local_path('/abs/tokenizer.json')


def test_empty_name():
    with pytest.raises(DataError, match='non-empty'):
        build_tokenizer('')


def test_corrupt_tokenizer_file(tmp_path):
    bad = tmp_path / 'tokenizer.json'
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(DataError, match='could not read tokenizer file'):
        build_tokenizer(str(bad))
