"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad config or bad input: the message names what is wrong and where."""


class ConfigError(UserError):
    """A config file, key or value is wrong."""


class DataError(UserError):
    """The input data (file, series, row) is wrong."""


SHOWN_WIDTH = 40
"""At most this many characters of one name or value the user gave are quoted in a message."""
SHOWN_NAMES = 10
"""At most this many names are listed in a message (then how many more there are)."""


def shown(value: object, width: int = SHOWN_WIDTH) -> str:
    """`value` as text cut to `width` characters ("..." in place of the rest): a message quotes a name or a
    value from the input, and a 100,000-character column name must not make a 100,000-character message."""
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def listed(names: object, limit: int = SHOWN_NAMES, width: int = SHOWN_WIDTH) -> str:
    """Names for a message (e.g. a table's columns): the first `limit`, each `shown`, then how many more."""
    names = list(names)
    text = ", ".join(shown(n, width) for n in names[:limit])
    return text if len(names) <= limit else f"{text} ({len(names) - limit} more)"
