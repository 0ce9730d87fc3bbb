"""The `vsr` command group: logging, error rendering, and lazily loaded subcommands."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

# name -> "module:attribute"; imported only when the command runs, so `vsr --help` stays fast.
COMMANDS: dict[str, str] = {
    "upscale": "vsr.cli.upscale:upscale",
    "batch": "vsr.cli.batch:batch",
    "stream": "vsr.cli.stream:stream",
    "train": "vsr.cli.train:train",
    "compress": "vsr.cli.compress:compress",
    "eval": "vsr.cli.evaluate:evaluate",
    "bench": "vsr.cli.bench:bench",
    "models": "vsr.cli.models:models",
    "export": "vsr.cli.export:export",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; a missing module is not listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not self._available(cmd_name):
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(COMMANDS[name].split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="vsr", prog_name="vsr")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Video super-resolution with dual regression networks."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main() -> None:
    """Console entry point: library errors become one `Error: ...` line and exit code 1."""
    # passive OpenMP waits and the glibc allocator tuning, before anything imports torch
    from vsr import configure_runtime
    from vsr.errors import Interrupted, VsrError

    configure_runtime()

    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Error: interrupted", err=True)
        sys.exit(130)
    except VsrError as exc:
        if debug:
            raise
        click.echo(f"Error: {_one_line(exc)}", err=True)
        sys.exit(1)
    except Exception as exc:  # an unexpected failure still gets one line unless --debug
        if debug:
            raise
        click.echo(f"Error: internal error: {type(exc).__name__}: {_one_line(exc)} "
                   "(rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    sys.exit(0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
