"""A CLI's main(argv) run in this process as its script runs it (through mini_ldm.cli.run): the exit status,
stdout and stderr, without starting an interpreter and importing torch again. Tests keep one subprocess
case per CLI for the real exit status; the many flag-error cases run here."""
import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout

from mini_ldm import cli


def run_main(main, *args, memory_hint: str | None = None) -> subprocess.CompletedProcess:
    """cli.run(main, argv) with stdout and stderr captured; SystemExit becomes the returncode. Any other
    exception (what a user would see as a traceback) propagates and fails the test."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    hint = {} if memory_hint is None else {"memory_hint": memory_hint}
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.run(main, argv, **hint)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
