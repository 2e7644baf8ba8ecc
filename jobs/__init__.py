"""Entry points: each job is `main(config)` plus a `python jobs/<job>.py` command line; `cli.py` is `videopoet`."""

if not __name__.startswith("videopoet."):
    raise ImportError(f"import this package as 'videopoet.{__name__}', not '{__name__}' (see videopoet.py)")
