"""The one exception type a user sees. The library raises it with a message that says what is wrong and
names the file or option; the CLI (hvdgan.cli) prints the message on one line and exits with
`exit_code`. It is a plain exception: the library does not depend on the command line's toolkit."""

from __future__ import annotations


class HvdganError(Exception):
    exit_code = 2

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or message  # the message without the option or file it names (for a re-wording)

    def __str__(self) -> str:
        return self.message
