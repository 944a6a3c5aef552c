"""The exceptions neurobit raises for bad input; the CLI turns them into one-line messages."""


class NeurobitError(Exception):
    """Base class: a problem with the user's input that the CLI reports in one line (exit 2)."""


class ParameterError(NeurobitError, ValueError):
    """A parameter value that is impossible (names the parameter)."""


class ShapeError(NeurobitError, ValueError):
    """A tensor whose shape does not fit (names the argument and both shapes)."""


class BackendError(NeurobitError, RuntimeError):
    """A backend that cannot express the requested configuration, or is not installed."""


class ConfigError(NeurobitError):
    """A circuit file that does not validate (names the key path and line where known)."""
