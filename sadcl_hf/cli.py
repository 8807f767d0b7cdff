"""The scripts' entry point: a user's mistake ends in one line on stderr, a bug keeps its traceback.

Every `scripts/*.py` ends with `run_script(main)`. An error the user can act on (a bad value, a missing or unreadable
file, a damaged checkpoint, a refused config, a failed download: `USER_ERRORS`) prints `error: <message>` on one line
and exits with status 1; any other exception is a bug and shows its full traceback. `--debug` anywhere on the
command line (or `SADCL_DEBUG=1`) shows the traceback of user errors too.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable

import httpx
import yaml
from huggingface_hub.errors import StrictDataclassError

from .data import TooManyUnreadableImagesError

__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "USER_ERRORS", "error_line", "run_script"]

DEBUG_FLAG = "--debug"
DEBUG_ENV = "SADCL_DEBUG"

# ValueError covers ImageLoadError, JSON decoding and the package's checks; OSError covers missing files
# (DatasetLayoutError), permissions, full disks and the Hub's errors (not found, offline, HTTP).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    StrictDataclassError,  # a refused config: SADCLConfig's checks
    pickle.UnpicklingError,  # a checkpoint that needs unsafe unpickling
    yaml.YAMLError,  # a garbled --config file
    httpx.HTTPError,  # a URL input that failed
    TooManyUnreadableImagesError,
)


def error_line(error: BaseException) -> str:
    """`error`'s message on one line (a refused config gives the check's own message, not strict's wrapper)."""
    if isinstance(error, StrictDataclassError) and error.__cause__ is not None:
        error = error.__cause__
    return " ".join(str(error).split()) or type(error).__name__


def run_script(main: Callable[[], int | None]) -> None:
    """Runs a script's `main()` and exits with its status; a `USER_ERRORS` exception exits with status 1 after
    `error: <message>` (one line) on stderr, unless `--debug` is on the command line (removed before `main` parses
    it) or `SADCL_DEBUG=1`, which re-raise it with its traceback."""
    debug = DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    sys.argv[1:] = [argument for argument in sys.argv[1:] if argument != DEBUG_FLAG]
    try:
        status = main()
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {error_line(error)} ({DEBUG_FLAG} or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(status)
