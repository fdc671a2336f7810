"""The one error type lowbit raises for bad input; the CLI turns it into one line and exit status 2."""


class LowbitError(ValueError):
    """A problem with what the user asked for or fed in (never a bug in lowbit)."""
