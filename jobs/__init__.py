"""Thin entry points: parse flags, build a config, call sgcore."""
