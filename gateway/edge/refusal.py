"""The answer to a request the worker sheds (gateway/edge/shedding.py), given without entering the app.

Under overload refusals are most answers, and each one that went through
Flask (a request context, every before- and after-request hook, the error
handler, JSON encoding, an access line) cost about twice the CPU this
answer does, CPU the accepted requests lost. So `refusing` puts a WSGI
callable of its own in front of the app, and a request on a shedding thread
gets `Refusal` instead. It answers what the app would have answered
(tests/unit/test_gateway_refusal.py holds the two equal):

- the 503 `overloaded` of gateway/errors.py (body, Content-Type and
  Retry-After), built once per process from the Overloaded error;
- the request's X-Request-ID, echoed or new (gateway/http.py `request_id`);
- the CORS headers Flask-Cors gives the same request: its own functions,
  over the options the app configured it with (`cors_resources`);
- shed_requests_total, and http_requests_total with the route a router
  match names (cached: a burst is mostly a few paths).

Refusals are not logged one by one (shed_requests_total counts them) nor
traced. gunicorn still parses each request, and drains a body nobody read
before it keeps the connection alive (ThreadWorker._keepalive_after).
"""
import functools
import time
from urllib.parse import unquote

from flask_cors.core import get_cors_headers, get_cors_options, merge_options, parse_resources, try_match_pattern
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_path_info

from common.contract.errors import Overloaded
from gateway import metrics
from gateway.edge import shedding
from gateway.errors import domain_error_response
from gateway.http import request_id

MESSAGE = "The gateway is at capacity: try again shortly."
ROUTES_CACHED = 256


def refusing(wsgi_app, refusal):
    """`wsgi_app`, with `refusal` answering every request of a shedding thread instead."""
    def dispatch(environ, start_response):
        if shedding.is_shedding():
            return refusal(environ, start_response)
        return wsgi_app(environ, start_response)
    return dispatch


def cors_resources(app, options):
    """(path pattern, resolved options) of each resource, as flask_cors.CORS(app, **options) resolves
    them in its init_app; [] when `options` is None (no CORS)."""
    if options is None:
        return []
    resources = parse_resources(merge_options(app, options).get("resources", r"/*"))
    return [(pattern, get_cors_options(app, options, resource)) for pattern, resource in resources]


class Refusal:
    """The WSGI callable a shed request runs: 503 overloaded, its static part built once."""

    def __init__(self, app, max_in_flight, cors_options=None):
        error = Overloaded(MESSAGE, {"max_in_flight": max_in_flight,
                                     "retry_after_seconds": shedding.RETRY_AFTER_SECONDS})
        with app.app_context():
            response = domain_error_response(error)
        self.status = response.status
        self.headers = response.headers.to_wsgi_list()
        self.body = [response.get_data()]
        self.cors = cors_resources(app, cors_options)
        self.url_map = app.url_map
        self.route = functools.lru_cache(maxsize=ROUTES_CACHED)(self._route)

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = "/" + get_path_info(environ).lstrip("/")  # werkzeug's Request.path
        headers = [*self.headers, ("X-Request-ID", request_id(environ.get("HTTP_X_REQUEST_ID", "")))]
        if self.cors:
            headers += self.cors_headers(environ, method, path)
        start_response(self.status, headers)
        metrics.count_shed()
        metrics.record_request(method, self.route(method, path), 503, time.perf_counter() - started)
        return self.body

    def cors_headers(self, environ, method, path):
        """Flask-Cors's after-request function (flask_cors.extension.make_after_request_function), on the environ."""
        path = unquote(path)
        for pattern, options in self.cors:
            if try_match_pattern(path, pattern, caseSensitive=True):
                found = get_cors_headers(options, EnvironHeaders(environ), method)
                return [(name, str(value)) for name, value in found.items()]
        return []

    def _route(self, method, path):
        """The url rule Flask would route (method, path) to, or None (metrics name it 'unmatched')."""
        try:
            rule, _ = self.url_map.bind("", path_info=path).match(method=method, return_rule=True)
        except HTTPException:  # not found, method not allowed, or a redirect (a missing slash)
            return None
        return rule
