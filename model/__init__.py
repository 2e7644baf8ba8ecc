"""Model architectures (VideoPoet LM, super-resolution transformer) and the token layout. No distributed code here."""

if not __name__.startswith("videopoet."):
    raise ImportError(f"import this package as 'videopoet.{__name__}', not '{__name__}' (see videopoet.py)")
