"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad config or bad input: the message names what is wrong and where."""


class ConfigError(UserError):
    """A config file, key or value is wrong."""


class DataError(UserError):
    """The input data (file, series, row) is wrong."""
