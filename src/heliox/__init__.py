"""Heliox: API gateway and caching proxy."""

__version__ = "0.1.0"
