"""Command-line interface: a thin shell over the Python API.

Every command module defines ``register(app)``. Errors the user can fix are printed as one line
(``drmguard: error: ...``) with exit code 2; set DRMGUARD_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ..errors import DrmguardError
from .common import flag_names

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Find and remove backdoors in deep regression models (DRMGuard).")

COMMAND_MODULES = ("data_cmds", "train_cmds", "attack_cmds", "scan_cmds", "experiment_cmds")
for _name in COMMAND_MODULES:
    importlib.import_module(f".{_name}", __name__).register(app)


def fail(message: str, code: int = 2) -> int:
    first = str(message).strip().splitlines()[0] if str(message).strip() else "unknown error"
    print(f"drmguard: error: {flag_names(first)}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns (and exits with) the process exit code."""
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="drmguard")
        code = rc if isinstance(rc, int) else 0
    except typer.Abort:
        code = fail("aborted", 1)
    except DrmguardError as e:
        code = fail(str(e))
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        code = fail(f"{e.strerror or e}: {e.filename}" if getattr(e, "filename", None) else str(e))
    except KeyboardInterrupt:
        code = fail("interrupted", 130)
    except Exception as e:
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click/typer usage errors
            e.show()
            code = int(e.exit_code)
            return _finish(code, argv)
        # an internal error: one line, traceback on request
        if os.environ.get("DRMGUARD_DEBUG") == "1":
            raise
        code = fail(f"internal error ({type(e).__name__}): {e} — rerun with DRMGUARD_DEBUG=1 "
                    "for a traceback", 1)
    return _finish(code, argv)


def _finish(code: int, argv) -> int:
    if argv is None:
        sys.exit(code)
    return code
