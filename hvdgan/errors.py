"""The one exception type a user sees. The library raises it with a message that says what is wrong and
names the file or option; the CLI (hvdgan.cli) prints the message on one line and exits with
`exit_code`. It is a plain exception: the library does not depend on the command line's toolkit."""


class HvdganError(Exception):
    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
