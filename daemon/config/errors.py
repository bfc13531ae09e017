"""ConfigError: a problem in one of CTDB's configuration files, named by file and line."""

from __future__ import annotations

from collections.abc import Sequence


class ConfigError(Exception):
    """A bad configuration file.

    ``str()`` is one line: ``/etc/ctdb/nodes:3: '198.18.0.300' is not an IP address``
    (``path: message`` when no line applies, just ``message`` when no file does).
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line

    @property
    def errors(self) -> list[ConfigError]:
        """Every problem carried by this exception (just itself here)."""
        return [self]

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        if self.line is None:
            return f"{self.path}: {self.message}"
        return f"{self.path}:{self.line}: {self.message}"


class ConfigErrors(ConfigError):
    """Several problems found in one pass (CTDB also reports every bad line, not just the first).

    ``path``/``line``/``message`` are those of the first problem; ``errors`` lists all of them and
    ``str()`` gives one line per problem.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for error in errors:
            flat.extend(error.errors)
        if not flat:
            raise ValueError("ConfigErrors needs at least one error")
        first = flat[0]
        super().__init__(first.message, first.path, first.line)
        self._errors = flat

    @property
    def errors(self) -> list[ConfigError]:
        return list(self._errors)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(error) for error in self._errors)


def raise_collected(errors: Sequence[ConfigError]) -> None:
    """Raise nothing, the one error, or a ConfigErrors holding all of them."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


def shown(text: str, limit: int = 80) -> str:
    """``repr(text)`` for an error message, shortened so one message stays one readable line."""
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def nul_byte_error(text: str, path: str) -> ConfigError | None:
    """CTDB cuts a line at a NUL byte and reads on, so a file saved as UTF-16 (a NUL after every
    ASCII character) silently reads as empty. pyctdbd refuses such a file instead (deliberately
    stricter than CTDB): the first line with a NUL is named."""
    at = text.find("\0")
    if at < 0:
        return None
    line = text.count("\n", 0, at) + 1
    hint = " (UTF-16? save it as plain text)" if text.count("\0") * 3 >= len(text) else ""
    return ConfigError(f"NUL byte in the file{hint}", path, line)

