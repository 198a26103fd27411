"""The one exception type a user sees: the CLI prints its message on one line and exits non-zero."""

import click


class HvdganError(click.ClickException):
    """A user-facing error: say what is wrong and name the file or option."""

    exit_code = 2
