"""Every error leaves the gateway in the contract's shape, never as a stack trace."""
import logging

from flask import jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from common.contract.errors import DomainError, error_body

log = logging.getLogger(__name__)


def error_response(status, code, message, details=None):
    return jsonify(error_body(code, message, details)), status


def domain_error_response(exc):
    """The answer to a DomainError (in an app context): its status and body, and the headers its status needs."""
    response, status = error_response(exc.http_status, exc.code, exc.message, exc.details)
    response.status_code = status
    if exc.http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
    if "retry_after_seconds" in exc.details:  # 429, and 503 overloaded or with an open circuit
        response.headers["Retry-After"] = str(exc.details["retry_after_seconds"])
    return response


def register_error_handlers(app):
    app.register_error_handler(DomainError, domain_error_response)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        _discard_body()
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(413, "payload_too_large", f"The body is larger than {limit} bytes.",
                              {"max_bytes": limit})

    @app.errorhandler(HTTPException)
    def http_error(exc):
        code = exc.name.lower().replace(" ", "_")
        return error_response(exc.code, code, exc.description)

    @app.errorhandler(Exception)
    def unexpected_error(exc):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")


DRAIN_AT_MOST = 16 * 1024 * 1024


def _discard_body():
    """Read (and drop) an oversized body before answering 413.

    Answering while the client is still sending makes the server close the
    connection under it, and the client sees a reset instead of the 413.
    """
    stream = request.environ.get("wsgi.input")
    remaining = min(request.content_length or 0, DRAIN_AT_MOST)
    while stream is not None and remaining > 0:
        chunk = stream.read(min(remaining, 64 * 1024))
        if not chunk:
            break
        remaining -= len(chunk)
