"""What gunicorn answers by itself, in the contract's error shape.

A request gunicorn cannot parse (a request line over 4094 bytes, too many or
too large headers, a malformed line) never reaches the app: gunicorn writes
the answer itself, by default as an HTML page. The contract promises
`{"error": {"code", "message", "details"}}` for every error, so the
gateway's gunicorn settings swap that writer for one that keeps gunicorn's
status and message and only changes the body.
"""
import json

from gunicorn import util

# gunicorn's reason phrases, as our codes (the rest: lower case, underscores).
_CODES = {500: "internal_error"}


def json_error_response(status, reason, message):
    """The bytes of a complete HTTP/1.1 error response (the connection then closes)."""
    code = _CODES.get(status, reason.lower().replace(" ", "_"))
    body = json.dumps({"error": {"code": code, "message": message or reason, "details": {}}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _write_json_error(sock, status_int, reason, mesg):
    util.write_nonblock(sock, json_error_response(status_int, reason, mesg))


def install():
    """Make gunicorn's own error answers JSON (call from the gunicorn settings file:
    it runs in the master, before the workers are forked)."""
    util.write_error = _write_json_error
