"""HTTP helpers the routes share: paging arguments and filters, If-Match, the answers with ETag or Location,
and the request id every answer carries."""
import re
import uuid

from flask import jsonify, request

from common.contract.errors import VersionConflict
from common.contract.schemas.base import ListQuery, schema_instance

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(incoming):
    """The id of a request whose X-Request-ID is `incoming` ("" when absent): that, if well-formed, else a new one."""
    return incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex


def page_args(query):
    """`limit` and `cursor` of a query string ListQuery validated, defaults filled in."""
    query = schema_instance(ListQuery).load(query)
    return query["limit"], query["cursor"]


def filtered_page_args(query):
    """A filtered list's query string (a ListQuery subclass's, validated): its filters, what is left
    past `limit` and `cursor` (strings: the service parses them), and `limit` and `cursor`, defaults filled in."""
    limit, cursor = page_args({key: query.pop(key) for key in ("limit", "cursor") if key in query})
    return query, limit, cursor


def expected_version():
    """The order version named by If-Match, or None (no header, or `*`): last write wins."""
    if "If-Match" not in request.headers:
        return None
    tags = request.if_match
    if tags.star_tag:
        return None
    versions = [int(tag) for tag in tags.as_set(include_weak=True) if tag and tag.isascii() and tag.isdigit()]
    if not versions:
        raise VersionConflict("If-Match names no version of this order.",
                              {"if_match": request.headers["If-Match"]})
    return versions[0]


def order_response(order, status=200):
    """An order as JSON, its version as the ETag."""
    response = jsonify(order)
    response.status_code = status
    response.set_etag(str(order["version"]))
    return response


def created(resource, location):
    """201 with the new resource and where it is."""
    response = jsonify(resource)
    response.status_code = 201
    response.headers["Location"] = location
    return response
