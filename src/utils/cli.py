"""Entry-script wrapper: a user error (`src.errors.CoupAlignError`: a bad config key, a data file or
checkpoint that cannot be used, a diverged run; or an OS error about a path the user gave) ends the
program with one line `error: <message>` on stderr and a non-zero exit code. Every other exception is a
bug, in our code or below it, and propagates with its full traceback."""
from __future__ import annotations

import logging
import sys
from typing import Callable

from src.errors import CoupAlignError, TrainingError

# OS errors about a path the user gave (a missing --image, a --output_dir that is a file); their message
# names the path.
PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# What is reported in one line; anything else keeps its traceback.
USER_ERRORS = (CoupAlignError,) + PATH_ERRORS


def exit_code(error: BaseException) -> int:
    """A type's own `exit_code` where it sets one (src.engine.checkpoint.CheckpointIOError: 1); else 1 for a
    TrainingError (a run that cannot go on) and 2 for every other user error (a config key, a data file, a
    checkpoint that does not fit, a path)."""
    own = getattr(type(error), "exit_code", None)
    if own is not None:
        return own
    return 1 if isinstance(error, TrainingError) else 2


def run_main(main: Callable[[], int]) -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except USER_ERRORS as e:
        logging.getLogger(__name__).debug("user error", exc_info=True)  # the traceback, for a DEBUG log
        print(f"error: {e}", file=sys.stderr)
        code = exit_code(e)
    sys.exit(code)


def split_options(args, options: dict) -> list:
    """Takes a tool's own `--name value` / `--name=value` options (the keys of `options`, whose values are
    replaced in place) out of `args`; returns the other arguments (config keys) in order."""
    from src.errors import ConfigError

    rest = []
    i = 0
    while i < len(args):
        key, _, value = args[i][2:].partition("=")
        if args[i].startswith("--") and key in options:
            if not value:
                i += 1
                if i >= len(args):
                    raise ConfigError(f"option '--{key}' has no value")
                value = args[i]
            options[key] = value
        else:
            rest.append(args[i])
        i += 1
    return rest
