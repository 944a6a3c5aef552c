"""Running the ``neurobit`` CLI in-process for tests (import: ``from cli_runner import ...``;
``tests/conftest.py`` puts this folder on ``sys.path``)."""
from typer.testing import CliRunner

from neurobit.cli import app


def invoke(*args):
    """``neurobit ARGS...`` in-process; an exception the CLI did not turn into an exit code is
    raised (so a crash is never mistaken for a clean failure)."""
    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def one_error_line(r) -> str:
    """The single ``neurobit: error: ...`` line of a run that exited with code 2."""
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neurobit: error: "), r.stderr
    return lines[0]
