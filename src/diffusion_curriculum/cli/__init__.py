"""The ``diffusion-curriculum`` command (also ``python -m diffusion_curriculum``).

Every problem a person can fix (a bad key or value, a missing dataset, an unusable checkpoint) is printed as
one sentence with exit status 2, never a traceback; a non-finite loss stops training with status 1.
"""

from __future__ import annotations

import sys

from ..checks import first_line
from ..errors import ConfigError
from .commands import cmd_analyze, cmd_compare, cmd_evaluate, cmd_presets, cmd_sample, cmd_train, final_line
from .parser import parse_args

__all__ = ["main", "parse_args", "final_line"]


def _plain_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings on the command line: one plain line, not a source location and a line of code."""
    print(f"warning: {first_line(message)}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``diffusion-curriculum`` entry point: returns the exit status (0 ok, 1 training failure or bug, 2 bad input, 130 interrupted by Ctrl-C or SIGTERM); every error is one line on stderr."""
    import os
    import warnings

    from ..checkpoint import CheckpointError
    from ..data import DataError
    from ..errors import Interrupted, TrainingError

    warnings.showwarning = _plain_warning
    args = parse_args(argv)
    if args.command is None:
        args.print_help()
        return 2
    handler = {
        "train": cmd_train,
        "sample": cmd_sample,
        "compare": cmd_compare,
        "presets": cmd_presets,
        "analyze": cmd_analyze,
        "evaluate": cmd_evaluate,
    }[args.command]
    try:
        return handler(args)
    except TrainingError as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # a builder's check of a named section's parameter (sampler, model, process, ...)
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        where = e.filename or "file system"
        print(
            f"error: {e.strerror or first_line(e)} ({where}); nothing already written was removed",
            file=sys.stderr,
        )
        return 2
    except Interrupted:  # the trainer has said what it saved: once is enough
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a person's mistake: still one sentence, the traceback on request
        if os.environ.get("DIFFUSION_CURRICULUM_DEBUG"):
            raise
        print(
            f"error: unexpected {type(e).__name__}: {first_line(e)} (this is a bug; rerun with "
            "DIFFUSION_CURRICULUM_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1
