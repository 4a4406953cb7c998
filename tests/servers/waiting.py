"""How a test waits for what one of its servers received."""
import time


def first_matching(items, predicate, timeout, describe):
    """The first of `items` (a list the server appends to) that `predicate` accepts, waiting up to
    `timeout` seconds; AssertionError with `describe()` when none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for item in list(items):
            if predicate(item):
                return item
        time.sleep(0.1)
    raise AssertionError(f"nothing matching within {timeout}s; {describe()}")
