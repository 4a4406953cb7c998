"""Customer rules: plain Python, no I/O."""


def normalize(fields):
    """Emails compare case-insensitively, so they are stored lower-cased."""
    if "email" in fields:
        return {**fields, "email": fields["email"].lower()}
    return fields
