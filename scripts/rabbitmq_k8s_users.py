"""The RabbitMQ users of ops/rabbitmq/definitions.json as Kubernetes resources of the RabbitMQ
Messaging Topology Operator: what writes ops/k8s/base/platform/rabbitmq-users.yaml.

    python -m scripts.rabbitmq_k8s_users > ops/k8s/base/platform/rabbitmq-users.yaml

definitions.json (written by scripts/rabbitmq_users.py) is the one statement of what each
process may do; this only translates it, so the regexes are never written twice. Each
process's user becomes a `User`, a `Permission` (configure, write, read in the vhost) and a
`TopicPermission` per exchange (the routing keys it may publish and bind on `nameko-rpc`).
The operator generates each user's name and password into the Secret
`<process>-user-credentials` (keys `username`, `password`), from which the process's
Deployment composes its AMQP_URI. The people's user (`admin`, tagged administrator) is left
out: on Kubernetes that is the RabbitMQ Cluster Operator's default user.
"""
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = ROOT / "ops" / "rabbitmq" / "definitions.json"
CLUSTER = "rabbitmq"  # the RabbitmqCluster of ops/k8s/base/platform/rabbitmq.yaml
API_VERSION = "rabbitmq.com/v1beta1"
PEOPLE_TAG = "administrator"  # the people's user (admin): the default user's role on Kubernetes
HEADER = """\
# Generated from ops/rabbitmq/definitions.json by `python -m scripts.rabbitmq_k8s_users`; do
# not edit: regenerate it (tests/unit/test_k8s.py fails while it is stale). Each process's own
# RabbitMQ user, made by the Messaging Topology Operator (install it first: docs/kubernetes.md),
# which writes the user's generated credentials into the Secret <name>-user-credentials.
"""


def resource_name(user):
    """The Kubernetes name of a process's user: its Deployment's (names take no `_`)."""
    return user.replace("_", "-")


def credentials_secret(user):
    """The Secret the Topology Operator writes a User's credentials into (`<User>-user-credentials`)."""
    return f"{resource_name(user)}-user-credentials"


def _resource(kind, name, spec):
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name},
            "spec": {**spec, "rabbitmqClusterReference": {"name": CLUSTER}}}


def resources(definitions):
    """[User, Permission, TopicPermission...] of every process's user in `definitions`, in its order
    (a process's user is one without the administrator tag)."""
    permissions = {}
    for permission in definitions["permissions"]:
        permissions.setdefault(permission["user"], []).append(permission)
    topic_permissions = {}
    for permission in definitions["topic_permissions"]:
        topic_permissions.setdefault(permission["user"], []).append(permission)
    out = []
    for user in definitions["users"]:
        if PEOPLE_TAG in user["tags"]:
            continue
        name, reference = resource_name(user["name"]), {"userReference": {"name": resource_name(user["name"])}}
        out.append(_resource("User", name, {"tags": user["tags"]} if user["tags"] else {}))
        for permission in permissions.get(user["name"], []):
            out.append(_resource("Permission", name, {
                **reference, "vhost": permission["vhost"],
                "permissions": {key: permission[key] for key in ("configure", "write", "read")}}))
        for permission in topic_permissions.get(user["name"], []):
            out.append(_resource("TopicPermission", f"{name}-{permission['exchange']}", {
                **reference, "vhost": permission["vhost"],
                "permissions": {key: permission[key] for key in ("exchange", "write", "read")}}))
    return out


def render(definitions):
    """The YAML file: the header, then one document per resource (long regexes kept on one line)."""
    return HEADER + "".join("---\n" + yaml.safe_dump(obj, sort_keys=False, width=1 << 16)
                            for obj in resources(definitions))


def main():
    sys.stdout.write(render(json.loads(DEFINITIONS.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
