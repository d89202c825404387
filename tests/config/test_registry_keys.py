"""The config check's static key tables equal the registries' signatures on this stack."""

import pytest

from foundry.config import registry_keys
from foundry.registry import required_keys, signature_keys


def _live():
    from foundry.callbacks import CALLBACKS
    from foundry.loggers import LOGGERS
    from foundry.optim.builders import OPTIMIZERS, SCHEDULERS

    return {'optimizer': (OPTIMIZERS, registry_keys.OPTIMIZER_KEYS, ('params',)),
            'scheduler': (SCHEDULERS, registry_keys.SCHEDULER_KEYS, ()),
            'callbacks': (CALLBACKS, registry_keys.CALLBACK_KEYS, ()),
            'loggers': (LOGGERS, registry_keys.LOGGER_KEYS, ())}


@pytest.mark.parametrize('section', ['optimizer', 'scheduler', 'callbacks', 'loggers'])
def test_static_tables_equal_the_builders_signatures(section):
    registry, table, skip = _live()[section]
    assert sorted(table) == sorted(registry), f'foundry/config/registry_keys.py: names of {section} differ'
    for name, builder in registry.items():
        assert table[name] == signature_keys(builder, skip=skip), \
            f'foundry/config/registry_keys.py: {section} {name!r} differs from its signature'
        required = required_keys(builder, skip=skip)
        assert registry_keys.REQUIRED_KEYS[section].get(name, ()) == required, (section, name)
