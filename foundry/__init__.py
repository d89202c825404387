"""foundry: pretrain MPT-style language models with Composer."""

__version__ = "0.1.0"


import warnings as _warnings


class FoundryWarning(UserWarning):
    """foundry's own warnings, shown as one line (`foundry: warning: ...`) without a file name and source line."""


_default_formatwarning = _warnings.formatwarning


def _formatwarning(message, category, filename, lineno, line=None):
    if isinstance(category, type) and issubclass(category, FoundryWarning):
        return f'foundry: warning: {message}\n'
    return _default_formatwarning(message, category, filename, lineno, line)


_warnings.formatwarning = _formatwarning
