"""The `persister` command line."""

from __future__ import annotations

import typer

from worker.cli import control, dead_letters, positions, run
from worker.cli.common import EXIT_BAD_SETTINGS, app, report
from worker.cli.failures import usage_line

# Importing the command modules registers their commands on `app`.
__all__ = ["app", "control", "dead_letters", "positions", "run", "run_app"]


def run_app(args: list[str]) -> int:
    """Run one command; whatever happens, at most one line on stderr says
    what failed (see `worker.cli.failures` for the exit codes)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(args, prog_name="persister", standalone_mode=False)
    except typer.TyperException as exc:  # a usage error
        context = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and context is not None:
            typer.echo(context.get_help())
            return EXIT_BAD_SETTINGS
        where = context.command_path if context is not None else "persister"
        typer.echo(usage_line(exc.format_message(), where), err=True)
        return EXIT_BAD_SETTINGS
    except typer.Abort:
        return 130
    except Exception as exc:
        return report(exc)
    return code if isinstance(code, int) else 0
