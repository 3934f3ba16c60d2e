"""Errors an operator can act on: printed as one line, exit status 1; and the
other exit statuses the commands use."""

from __future__ import annotations

EXIT_SETUP_ERROR = 1   # a SetupError: nothing was captured
EXIT_INVALID = 2       # an invalid config file or command line
EXIT_TASK_FAILED = 3   # the capture failed while running (the reason is logged)
EXIT_RECORDS_LOST = 4  # an output lost records (the final records: line says how many, where)


class SetupError(RuntimeError):
    """Something outside the program is not as needed (permissions, interface,
    broker, kernel support). The message is the whole explanation."""
