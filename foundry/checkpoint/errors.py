"""The one exception type for checkpoint paths that cannot be read as asked.

Its own module so that everything under checkpoint/ (layout, store, remote access, the reader)
can raise it without importing the reader and its torch dependency.
"""

from __future__ import annotations

from foundry.config.errors import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint path that cannot be read as asked."""
