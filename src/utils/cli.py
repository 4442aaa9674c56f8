"""Entry-script wrapper: user errors (bad config, missing or wrong files, bad data, divergence) end
the program with one clear line on stderr and a non-zero exit code, not a deep traceback."""
from __future__ import annotations

import logging
import sys
from typing import Callable

# Exceptions whose message is written for the user; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, KeyError)


def run_main(main: Callable[[], int]) -> None:
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except USER_ERRORS as e:
        logging.getLogger(__name__).debug("user error", exc_info=True)
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {message}", file=sys.stderr)
        code = 2
    except RuntimeError as e:  # our CheckpointError / TrainingDiverged and MindSpore runtime failures
        if type(e).__module__.startswith("src."):
            print(f"error: {e}", file=sys.stderr)
            code = 1
        else:
            raise
    sys.exit(code)
