"""The one exception type for bad input: the CLI prints its message (no traceback) and exits non-zero."""


class UserError(Exception):
    pass
