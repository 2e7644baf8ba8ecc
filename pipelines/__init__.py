"""Curation and pre-tokenization stages, and the adapter that runs a list of them on Ray Data."""

if not __name__.startswith("videopoet."):
    raise ImportError(f"import this package as 'videopoet.{__name__}', not '{__name__}' (see videopoet.py)")
