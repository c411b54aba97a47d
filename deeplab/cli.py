"""What every entry point does with a user's mistake: one line on stderr, exit status 2."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from deeplab.errors import UserError


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """A UserError (config, data, checkpoint, divergence) prints `error: <message>` and exits with 2."""
    try:
        yield
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
