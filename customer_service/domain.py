"""Customer rules: plain Python, no I/O."""
import ipaddress
from urllib.parse import urlsplit

from common.contract.errors import ValidationFailed
from common.contract.schemas.customers import DEFAULT_PREFERENCES


def normalize(fields, preferences=None):
    """Emails compare case-insensitively, so they are stored lower-cased. The notification
    preferences `fields` leave out keep their current values (`preferences`; None: a new
    customer, whose are the defaults)."""
    fields = dict(fields)
    if "email" in fields:
        fields["email"] = fields["email"].lower()
    if preferences is None or "notification_preferences" in fields:
        fields["notification_preferences"] = {**(preferences or DEFAULT_PREFERENCES),
                                              **fields.get("notification_preferences", {})}
    return fields


def endpoint_host(url):
    """(scheme, host, port) of a push endpoint URL (the schema has checked its form)."""
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def check_push_endpoint(url, addresses, allow_hosts):
    """The webhooks' URL rules, for a push endpoint: `https`, or `http` to a host in
    WEBHOOK_ALLOW_HOSTS; and every address the host resolves to (`addresses`) public
    (not loopback, private, link-local, ...) unless the host is listed there. The push
    service a browser hands out is always a public https URL; anything else would make
    notification_service post to a place inside the network. ValidationFailed naming
    `endpoint` otherwise."""
    scheme, host, _ = endpoint_host(url)
    allowed = host in allow_hosts
    if scheme != "https" and not allowed:
        _refuse("Must be an https URL.")
    if not addresses:
        _refuse(f"{host} does not resolve.")
    if not allowed:
        private = [str(address) for address in map(ipaddress.ip_address, addresses) if not address.is_global]
        if private:
            _refuse(f"{host} resolves to a non-public address ({', '.join(sorted(set(private)))}).")


def _refuse(message):
    raise ValidationFailed("The push endpoint is not allowed.", {"endpoint": [message]})
