"""Errors a user can act on. The CLI prints their message (what, which file, what to do) without a traceback."""


class UserError(RuntimeError):
    """Bad input or environment the user can fix; the message says what was wrong and what to do."""
