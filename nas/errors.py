"""One exception type for mistakes a user can fix; the CLI prints it as one line, without a traceback."""


class NasError(Exception):
    """A problem with the user's input (a file, a key, a value) that they can fix.

    The message names the file or key and says what was expected.
    """


class LockedRunError(NasError):
    """Another live process is writing this run."""


class Stopped(Exception):
    """The user stopped a search (Ctrl-C, SIGTERM); everything up to the last epoch is saved."""


class Recycled(Exception):
    """A worker process ran its share of trials and exits so that a fresh one continues (flat memory)."""
