"""The valid `model.*` keys and their types, shared by the section check and the model-error renderer.

Its own module so that sections.py (which calls the model check) and model_check.py (which names
keys in MPTConfig's refusals) both read it without importing each other.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any

# llm-foundry model keys that are not MPTConfig arguments but are accepted for compatibility.
EXTRA_MODEL_KEYS = ('loss_fn', 'pretrained_model_name_or_path')


def model_key_types() -> dict[str, Any]:
    """Valid `model.*` keys (besides `name`) with their annotated types, read off MPTConfig's signature."""
    from foundry.models.mpt.configuration import MPTConfig

    params = inspect.signature(MPTConfig.__init__).parameters
    hints = typing.get_type_hints(MPTConfig.__init__)
    keys = {n: hints.get(n, Any) for n, p in params.items()
            if n != 'self' and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    keys.update({k: str for k in EXTRA_MODEL_KEYS})
    # llm-foundry's switches for features foundry lacks: MPTConfig accepts each at its "off" value.
    from foundry.models.mpt.foreign_keys import FOREIGN_TOP_KEYS

    keys.update({k: Any for k in FOREIGN_TOP_KEYS})
    return keys
