"""Every error leaves the gateway in the contract's shape, never as a stack trace."""
import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

from common.errors import DomainError

log = logging.getLogger(__name__)


def error_response(status, code, message, details=None):
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return jsonify(body), status


def register_error_handlers(app):
    @app.errorhandler(DomainError)
    def domain_error(exc):
        response = error_response(exc.http_status, exc.code, exc.message, exc.details)
        if exc.http_status == 401:
            response[0].headers["WWW-Authenticate"] = 'Bearer realm="api"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc):
        code = exc.name.lower().replace(" ", "_")
        return error_response(exc.code, code, exc.description)

    @app.errorhandler(Exception)
    def unexpected_error(exc):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "Something went wrong on our side.")
