"""Shared infrastructure: typed configs, atomic fsspec I/O, logging, the Ray runtime."""

if not __name__.startswith("videopoet."):
    raise ImportError(f"import this package as 'videopoet.{__name__}', not '{__name__}' (see videopoet.py)")
