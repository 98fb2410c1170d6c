"""The one exception type whose message is meant for people, not for tracebacks."""


class WhatsthatError(Exception):
    """A problem the user can fix; the CLI prints its message and exits 1, the app shows it."""
