"""The one exception type RetroLM raises for bad input; its message always names the fix."""
import sys
from typing import Callable


class RetroLMError(ValueError):
    """Bad input or configuration. Subclasses ValueError so generic handlers still catch it."""


def exit_code(work: Callable[[], int | None]) -> int:
    """Run a command line's `work()`: its exit code (None counts as 0), or 2 after printing a `RetroLMError` as
    one line on stderr (bad input is the user's to fix, not a crash with a traceback)."""
    try:
        return work() or 0
    except RetroLMError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
