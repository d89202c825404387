"""Config loading: each class of bad input gets one clear message naming key and fix."""

import os

import pytest

from foundry.config.errors import ConfigError, closest_match
from foundry.config.load import load_config, read_yaml_with_overrides

TINY = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'tiny.yaml')


def error_of(*overrides: str, path: str = TINY) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


def test_tiny_config_loads_with_interpolations_resolved():
    cfg = load_config(TINY)
    assert cfg.model['max_seq_len'] == 32
    assert cfg.train_loader['dataset']['max_seq_len'] == 32
    assert cfg.optimizer['lr'] == 1e-3
    assert cfg.fsdp_config.sharding_strategy == 'FULL_SHARD'


def test_overrides_merge_on_top_of_the_yaml():
    cfg = load_config(TINY, ['optimizer.lr=5e-4', 'variables.max_seq_len=64', 'max_duration=10ba'])
    assert cfg.optimizer['lr'] == 5e-4
    assert cfg.model['max_seq_len'] == 64  # interpolations see the override
    assert cfg.max_duration == '10ba'


def test_misspelt_nested_key_names_full_path_and_closest_key():
    message = error_of('optimizer.lrr=1e-4')
    assert '`optimizer.lrr`' in message and 'did you mean `optimizer.lr`' in message


def test_misspelt_top_level_key_names_closest_key():
    message = error_of('max_durations=10ba')
    assert 'did you mean `max_duration`' in message


def test_misspelt_model_and_attention_keys():
    assert 'did you mean `model.n_layers`' in error_of('model.n_layer=3')
    assert 'did you mean `model.attn_config.alibi_bias_max`' in error_of('model.attn_config.alibi_bias_mx=4')


def test_misspelt_loader_and_fsdp_keys():
    assert 'did you mean `train_loader.dataset.shuffle_seed`' in error_of('train_loader.dataset.shufle_seed=1')
    assert 'did you mean `fsdp_config.activation_checkpointing`' in error_of('fsdp_config.activation_checkpoint=true')


def test_wrong_type_names_key_and_expected_type():
    message = error_of('global_train_batch_size=eight')
    assert '`global_train_batch_size`' in message and 'expected an integer' in message
    message = error_of('model.no_bias=maybe')
    assert '`model.no_bias`' in message and 'true or false' in message


def test_wrong_choice_lists_the_valid_ones():
    message = error_of('fsdp_config.sharding_strategy=FULL')
    assert "'FULL_SHARD'" in message and 'HYBRID_SHARD' in message


def test_missing_required_key_says_what_and_where(tmp_path):
    text = open(TINY).read().replace('global_train_batch_size: 8\n', '')
    path = tmp_path / 'no_batch.yaml'
    path.write_text(text)
    message = error_of(path=str(path))
    assert 'missing required key `global_train_batch_size`' in message


def test_unknown_registered_name_suggests_nearest():
    message = error_of('optimizer.name=decoupled_lion')
    assert 'decoupled_lionw' in message


def test_unsupported_llm_foundry_key_says_so():
    message = error_of('tp_config={}')
    assert 'not supported by foundry yet' in message


def test_bad_override_syntax_and_missing_file():
    assert 'key=value' in error_of('optimizer.lr')
    with pytest.raises(ConfigError, match='config file not found: /no/such.yaml'):
        load_config('/no/such.yaml')


def test_unresolvable_interpolation_is_a_config_error(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text(open(TINY).read().replace('${variables.max_seq_len}', '${variables.seq_len}', 1))
    message = error_of(path=str(path))
    assert 'cannot resolve' in message and 'seq_len' in message


def test_closest_match_handles_case_and_prefix_slips():
    assert closest_match('LR', ['lr', 'betas']) == 'lr'
    assert closest_match('zzz', ['lr', 'betas']) is None


def test_read_yaml_returns_plain_containers():
    raw = read_yaml_with_overrides(TINY)
    assert isinstance(raw['model'], dict) and raw['model']['d_model'] == 32
