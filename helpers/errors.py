"""The errors bad input raises. Each message names the file or the setting and says what to do.

A command that reports bad input to its user catches InputError (and OSError around the files it
reads and writes), prints the message and exits with its status; any other exception is a bug
and keeps its traceback.
"""


class InputError(ValueError):
    """Input that cannot be used: a file, a setting, a device."""


class ConfigError(InputError):
    """A setting with no meaning here: an unknown name, a value out of range, two settings that
    do not go together."""


class PairsError(InputError):
    """A pairs CSV that cannot be used (unreadable, columns missing, no pairs), or shared data
    that is not where a preset looks for it."""


class StatisticsError(InputError):
    """Normalisation statistics that are missing, unreadable or made for other settings."""
