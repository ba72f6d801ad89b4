"""The one exception for input a run cannot use: its message is the sentence a user reads."""


class InputError(Exception):
    """Flags, data, weights, files or hardware that a run cannot use. The message is one sentence
    saying what happened and what to do; the script prints it once and exits with status 2."""
