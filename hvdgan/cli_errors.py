"""How `hvdgan` reports a mistake: one line on stderr, `Error: ...`, naming the option, variable or file and
what is wrong, and exit status 2 (HvdganError.exit_code: 1 for a failure that is not the user's input); never a
traceback. Click's own usage errors get the same one line (Click prints the usage and a hint around it: three
more lines that hide the one that matters), and a value read from an HVDGAN_* variable is named by the
variable, not by the option it stands for (the user never typed the option)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from .errors import HvdganError

# Click shows the help for a group called without a command: that is not a mistake to shorten
_SHOWS_HELP = tuple(getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",)
                    if hasattr(click.exceptions, name))


def one_line(exc: click.UsageError) -> click.ClickException:
    """A usage error as one line, with the variable's name where the bad value came from one."""
    if isinstance(exc, click.BadParameter) and exc.ctx is not None and exc.param is not None and exc.param.name:
        if exc.ctx.get_parameter_source(exc.param.name) == ParameterSource.ENVIRONMENT:
            exc.param_hint = variable_of(exc.ctx, exc.param)
    failure = click.ClickException(" ".join(exc.format_message().split()))
    failure.exit_code = exc.exit_code
    return failure


def variable_of(ctx: click.Context, param: click.Parameter) -> str:
    envvar = getattr(param, "envvar", None)
    if isinstance(envvar, str):
        return envvar
    return f"{ctx.auto_envvar_prefix}_{param.name.upper()}"


class Commands(click.Group):
    """An HvdganError (reading a job file, or running) and a usage error become one line `Error: MESSAGE`
    with their exit status."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:  # (the group's own options: `hvdgan --bogus`)
            if isinstance(exc, _SHOWS_HELP):
                raise
            raise one_line(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HvdganError as exc:
            failure = click.ClickException(exc.message)
            failure.exit_code = exc.exit_code
            raise failure from None
        except click.UsageError as exc:
            if isinstance(exc, _SHOWS_HELP):
                raise
            raise one_line(exc) from None
