"""The `vsr` command group: logging, error rendering, and lazily loaded subcommands."""

from __future__ import annotations

import atexit
import contextlib
import difflib
import importlib
import importlib.util
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

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

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """As click's, with the nearest command named where the first word is none."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            near = difflib.get_close_matches(args[0], self.list_commands(ctx), n=1) if args else []
            if not near:
                raise
            raise click.UsageError(f"No such command {args[0]!r}; did you mean {near[0]!r}?",
                                   ctx) from None

    @staticmethod
    def _available(name: str) -> bool:
        return importlib.util.find_spec(COMMANDS[name].split(":")[0]) is not None


# SIGTERM (kill, systemd, docker stop) and SIGHUP (the terminal closed) stop these commands
# the way Ctrl-C does. For the file commands the partial output is removed and one `Error:`
# line is printed, with 128 + the signal number as the exit status, as a shell reports a
# process killed by that signal: 130 for SIGINT (Ctrl-C), 143 for SIGTERM, 129 for SIGHUP.
# `vsr stream` is the exception: a live stream's end is a stop, so it closes its output
# (playable as far as it got), prints its totals and exits 0.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
STOPPABLE = frozenset({"upscale", "batch", "stream", "bench", "export", "compress"})


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# An exception raised inside an import can be lost: torch's C code imports numpy and clears
# any error it raises (numpy is optional to it), so a Ctrl-C or SIGTERM during start-up was
# ignored (the run went on to the end, exit 0) or broke numpy ("cannot load module more than
# once").
#
# One raised in a Python function of the standard library that takes or gives back a lock
# leaves the lock held for good: once the lock is taken, it escapes before the caller's
# `with` (or try) has begun; as the release begins, before the release. A Ctrl-C there (a
# queue's put or get, an Event, a logging handler) left a frame queue's lock held, and the
# pipeline's decode or encode thread blocked on it.
_LOCK_CODE = frozenset(f.__code__ for f in (
    threading.Condition.__enter__, threading.Condition.__exit__,
    threading.Condition._release_save, threading.Condition._acquire_restore,
    logging.Handler.acquire, logging.Handler.release,
    *(f for f in (getattr(logging, "_acquireLock", None), getattr(logging, "_releaseLock", None))
      if f is not None)))
# A signal that lands in either is sent again this long after, until it lands elsewhere.
_RETRY_S = 0.05
_PENDING: set[int] = set()  # the signals waiting to be sent again


def _unsafe(frame: FrameType | None) -> bool:
    """Whether an exception raised where a signal landed (``frame`` and its callers) could
    be lost in an import or leave a lock held. The whole stack is looked at: the handler of a
    second signal runs inside the first one's, below the frame that took a lock."""
    while frame is not None:
        if (frame.f_code in _LOCK_CODE
                or frame.f_code.co_filename.startswith("<frozen importlib._bootstrap")):
            return True
        frame = frame.f_back
    return False


def _later(signum: int) -> None:
    """Send ``signum`` to this process again in a moment (once, however often it came)."""
    if signum in _PENDING:
        return
    _PENDING.add(signum)
    timer = threading.Timer(_RETRY_S, _send_again, (signum,))
    timer.daemon = True
    timer.start()


def _send_again(signum: int) -> None:
    _PENDING.discard(signum)
    os.kill(os.getpid(), signum)


# The stop signals raised so far. Native code can also turn the exception into one of its
# own (safetensors: "could not deserialize"); an error after a stop is reported as the stop.
_STOPS: list[int] = []


@contextlib.contextmanager
def stop_signals_interrupt(*, term: bool = True) -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises :class:`Stopped`; later ones are
    ignored so they cannot cut the clean-up short. Ctrl-C raises KeyboardInterrupt, as it
    does outside. Neither raises inside an import or a lock's bookkeeping (see _LOCK_CODE).
    The previous handlers come back after. ``term`` False: Ctrl-C only; SIGTERM and SIGHUP
    keep theirs (by default they end the process at once, which no import can lose)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            return
        if _unsafe(frame):
            _later(signum)
            return
        received.append(signum)
        _STOPS.append(signum)
        raise Stopped(signum)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if _unsafe(frame):
            _later(signum)
            return
        _STOPS.append(signum)
        raise KeyboardInterrupt

    # a signal the caller chose to ignore (`nohup` ignores SIGHUP) stays ignored
    previous = {s: signal.signal(s, handler) for s in (STOP_SIGNALS if term else ())
                if signal.getsignal(s) is not signal.SIG_IGN}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stop_signals_request(requested: threading.Event) -> Iterator[list[int]]:
    """For a run that stops cleanly between two steps (`vsr train`): within the block, the
    first SIGINT, SIGTERM or SIGHUP sets ``requested`` and is appended to the yielded list;
    a second raises :class:`Stopped` at once. The previous handlers come back after."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            if _unsafe(frame):
                _later(signum)
                return
            raise Stopped(signum)
        received.append(signum)
        requested.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, *STOP_SIGNALS)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class _EscapingFormatter(logging.Formatter):
    """Log lines with control characters escaped: a model, checkpoint or file name from an
    untrusted file cannot start a new line (forging an `Error:` line) or move the cursor."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return printable(super().formatMessage(record))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="vsr", prog_name="vsr")
@click.pass_context
def cli(ctx: click.Context, verbose: int, debug: bool) -> None:
    """Video super-resolution with dual regression networks."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if ctx.invoked_subcommand in STOPPABLE:
        if _startup_stop is None:  # called without main(): install them now
            ctx.with_resource(stop_signals_interrupt())
    elif _startup_stop is not None:
        # other commands keep the default SIGTERM and SIGHUP (or set their own), and Ctrl-C
        # raises KeyboardInterrupt as by default, but never inside an import, where it can
        # be lost (a train, eval or models start-up importing torch ran on)
        _startup_stop.close()
        ctx.with_resource(stop_signals_interrupt(term=False))


# The handlers main() installs before the command line is parsed, so that SIGTERM or SIGHUP
# during start-up (imports take seconds on a busy machine) also stops like Ctrl-C.
_startup_stop: contextlib.ExitStack | None = None


# click 8.2+: a command run without arguments shows its help (click 8.1 prints it itself)
_HELP_WANTED = getattr(click.exceptions, "NoArgsIsHelpError", ())


def main() -> None:
    """Console entry point: library errors become one `Error: ...` line and exit code 1;
    Ctrl-C (and SIGTERM/SIGHUP where handled, see STOP_SIGNALS) exit with 128 + the signal."""
    # passive OpenMP waits and the glibc allocator tuning, before anything imports torch
    from vsr import configure_runtime
    from vsr.errors import ConfigError, Interrupted, VsrError

    configure_runtime()

    global _startup_stop
    debug = "--debug" in sys.argv[1:]
    _startup_stop = contextlib.ExitStack()
    _startup_stop.enter_context(stop_signals_interrupt())
    try:
        with _startup_stop:  # the previous handlers are back before the error is printed
            cli.main(standalone_mode=False)
    except click.exceptions.Abort as exc:
        _error_line("interrupted", exc)
        _exit_stopped(128 + _signal_of(exc))
    except click.UsageError as exc:
        if _other_rank():
            sys.exit(exc.exit_code)  # the same command line: rank 0 says what is wrong
        if isinstance(exc, _HELP_WANTED):
            exc.show()  # the command's help: it was called with nothing to do
        else:  # one line, as every error (click prints four)
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            _error_line(printable(" ".join(exc.format_message().split())) + hint)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        _error_line(_one_line(exc), exc)
        _exit_stopped(128 + _signal_of(exc))
    except KeyboardInterrupt as exc:
        _error_line("interrupted", exc)
        _exit_stopped(128 + _signal_of(exc))
    except Exception as exc:  # VsrError: one line; anything else too, unless --debug
        if _STOPS and not debug:  # after a stop: maybe its exception, turned into another
            # on its way (safetensors: "could not deserialize"), maybe an error of the clean-up
            # after it (a stream's close): the stop is what happened, the error is said too
            _error_line(f"interrupted; {_one_line(exc)}", Stopped(_STOPS[0]))
            _exit_stopped(128 + _STOPS[0])
        if debug:
            raise
        if isinstance(exc, VsrError):
            rank = _other_rank()
            if rank and isinstance(exc, ConfigError):
                sys.exit(1)  # the same command line: rank 0 says what is wrong with it
            _error_line((f"rank {rank}: " if rank else "") + _one_line(exc))
            sys.exit(1)
        _error_line(f"internal error: {type(exc).__name__}: {_one_line(exc)} "
                    "(rerun with --debug for the traceback)")
        sys.exit(1)
    sys.exit(0)


def _other_rank() -> int:
    """This process's rank where torchrun (or another env:// launcher) started it as one of
    several; 0 for rank 0 and for a process of its own. Every rank runs the same command
    line, so what is wrong with it is said once, by rank 0; a failure of this rank's own
    (its device, its data) is said with its rank."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return max(0, int(os.environ.get("RANK", "0")))
    except ValueError:
        pass
    return 0


def _exit_stopped(code: int) -> None:
    """Exit a stopped run now: its outputs are already cleaned up (partials removed, job store
    committed). atexit handlers run (a local Ray instance is shut down), but the interpreter's
    teardown is skipped: idle native threads of FFmpeg and OpenMP need none. (A SIGSEGV after
    the error line, seen in CI, was a decode thread left running by a stop that landed just
    after its start; vsr.threads is the mend, tests/test_threads.py the test.)"""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def printable(text: str) -> str:
    """``text`` with every non-printable character (newlines, escapes, bidi controls)
    written as a Python escape, so it stays on one line and shows what it holds."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(exc: BaseException) -> str:
    """The message on one line: a newline in it (a file name may hold one) is shown as \\n,
    not turned into a space that would name another file."""
    text = re.sub(" {2,}", " ", printable(str(exc).strip()))
    return text or type(exc).__name__


def _signal_of(exc: BaseException) -> int:
    """The signal behind an interruption: the Stopped in its chain of causes, else SIGINT."""
    seen: BaseException | None = exc
    for _ in range(16):
        if seen is None:
            break
        if isinstance(seen, Stopped):
            return seen.signum
        seen = seen.__cause__ or seen.__context__
    return int(signal.SIGINT)


def _error_line(message: str, interrupted: BaseException | None = None) -> None:
    """Print ``Error: message`` on stderr; a stop by signal names it. After SIGHUP the
    terminal may be gone: a failed write is not an error of its own."""
    if interrupted is not None and _signal_of(interrupted) != signal.SIGINT:
        message = f"{message} ({signal.Signals(_signal_of(interrupted)).name})"
    with contextlib.suppress(OSError, ValueError):
        click.echo(f"Error: {message}", err=True)
