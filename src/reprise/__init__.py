"""Reprise: an OpenAI-compatible caching gateway with document chat."""

__version__ = "0.1.0"
