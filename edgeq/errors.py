"""The one exception type users see; the CLI prints its message as a single line."""


class EdgeqError(Exception):
    """A user-facing error: bad input, a missing file, an unsupported model. The message names the problem."""
