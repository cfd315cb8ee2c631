"""User errors of the command-line tools (googlenet_fast.cli, googlenet_fast.train)."""


class CommandError(Exception):
    """A user error: printed as ``googlenet-fast <command>: error: <message>``, exit code 2."""
