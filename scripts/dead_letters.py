"""Dead letters: events a handler failed on EVENT_MAX_RETRIES times.

    python -m scripts.dead_letters list      # what is there, and which handler queue it came from
    python -m scripts.dead_letters replay    # send each back to its handler queue (after the fix)

Listing holds the messages unacknowledged and then returns them, so it
changes nothing. Replay resets the retry count and acknowledges each letter
only after its copy is published to the handler's queue.
"""
import json
import sys

from kombu import Connection

import common  # noqa: F401
from common.contract.settings import load_settings
from common.kit.consumers import RETRIES_HEADER, dead_letter_topology


def _origin_queue(message):
    deaths = (message.headers or {}).get("x-death") or [{}]
    return deaths[0].get("queue")


def _drain(connection, quorum):
    """Every message in the dead-letter queue, unacknowledged."""
    _, queue = dead_letter_topology(quorum)
    queue = queue.bind(connection.channel())
    queue.declare()
    messages = []
    while (message := queue.get(no_ack=False, accept=["json"])) is not None:
        messages.append(message)
    return messages


def list_letters(amqp_uri, quorum=False):
    """quorum: AMQP_QUORUM_QUEUES (the queue is declared as the services declare it)."""
    with Connection(amqp_uri) as connection:
        messages = _drain(connection, quorum)
        letters = [{"queue": _origin_queue(m), "retries": int((m.headers or {}).get(RETRIES_HEADER, 0)),
                    "body": m.payload} for m in messages]
        for message in messages:
            message.requeue()
    return letters


def replay(amqp_uri, quorum=False):
    """Send every dead letter back to the queue it died in; the number replayed."""
    with Connection(amqp_uri) as connection:
        producer = connection.Producer()
        replayed = 0
        for message in _drain(connection, quorum):
            headers = {k: v for k, v in (message.headers or {}).items() if k not in ("x-death", RETRIES_HEADER)}
            producer.publish(message.body, exchange="", routing_key=_origin_queue(message), headers=headers,
                             content_type=message.content_type, content_encoding=message.content_encoding,
                             delivery_mode=2, retry=True)
            message.ack()
            replayed += 1
    return replayed


def main(argv):
    settings = load_settings()
    amqp_uri, quorum = settings.amqp_uri, settings.amqp_quorum_queues
    command = argv[0] if argv else "list"
    if command == "list":
        letters = list_letters(amqp_uri, quorum)
        for letter in letters:
            print(json.dumps(letter))
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
        return 0
    if command == "replay":
        print(f"replayed {replay(amqp_uri, quorum)} dead letter(s)")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
