"""Logging helpers shared by every process."""
import logging


class ExpectedErrorsWithoutTraceback(logging.Filter):
    """Nameko logs every expected (domain) error with a full traceback; a
    404 or a 409 is routine, so keep the one-line message and drop the trace."""

    def filter(self, record):
        if isinstance(record.msg, str) and record.msg.startswith("(expected)"):
            record.exc_info = None
            record.exc_text = None
        return True
