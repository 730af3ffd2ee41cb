"""The exception hierarchy: one base, each subclass also the builtin it resembles."""


class OutagewatchError(Exception):
    """Base of every error outagewatch raises on purpose."""


class ListenError(OutagewatchError, OSError):
    """The HTTP endpoint could not bind its address."""


class ConfigError(OutagewatchError, ValueError):
    """The configuration is unusable; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class UnknownWindow(OutagewatchError, LookupError):
    """No maintenance window has this id."""


class UnknownIncident(OutagewatchError, LookupError):
    """No open incident has this id."""
