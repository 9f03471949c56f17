"""The one exception type for bad input, so callers can catch DemP's complaints."""


class DempError(ValueError):
    """Bad input to DemP: the message says what was wrong and how to fix it."""
