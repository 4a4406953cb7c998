"""Test-wide setup. Eventlet must patch the standard library before anything
else imports it: nameko 2.14's pytest plugin no longer does it for us."""
import warnings

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")

import eventlet  # noqa: E402

eventlet.monkey_patch()

from common.kit import patches  # noqa: E402

# The tests' own psycopg2 connections must not block the hub either.
patches.apply([patches.GREEN_PSYCOPG2])
