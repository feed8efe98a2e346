"""Exceptions shared by every layer of sgcore."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-supplied setting is invalid; the message names it and the fix."""


class InputError(ValueError):
    """An input dataset or URL cannot be used; the message carries the URL."""
