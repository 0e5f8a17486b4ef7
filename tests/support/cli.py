"""The one way tests run the CLI: `cli("pack", src, "--format", "i2s", "-o", out)`."""
from __future__ import annotations

from typing import Any

from click.testing import CliRunner, Result

from bitconv.cli import cli as bitconv


def cli(*args: object, **kw: Any) -> Result:
    """`bitconv ARGS` in-process (arguments passed through str()); `kw` goes to CliRunner.invoke
    (e.g. terminal_width, env, input). click >= 8.2 keeps the streams apart: r.stdout, r.stderr,
    and r.output, both interleaved as a terminal would show them. Exceptions are caught into
    r.exception, exit codes into r.exit_code, as click does by default."""
    return CliRunner().invoke(bitconv, [str(a) for a in args], **kw)
