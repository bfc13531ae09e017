"""Errors that reach a user as one clear line."""


class UserError(Exception):
    """Bad input, a missing prerequisite or an impossible request.

    The CLI prints ``ctdblab: <message>`` and exits with status 2; no traceback.
    """
