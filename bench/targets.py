"""What the cases are called, and which CPU counts as the system's."""
from bench.cpu import KERNEL

OURS, FLOOR, NAIVE, OURS_2X = "ours", "floor", "naive", "ours, 2 order_service"
# The observability cases, each on a restarted stack, back to back (cases.separate_cases).
METRICS_ON, METRICS_OFF = "ours, metrics on", "ours, metrics off"
TRACING_ON, TRACING_ALL = "ours, tracing on", "ours, tracing 100%"  # at the configured ratio; every trace
# Two stacks at the same time, the default one and a second one (side_by_side.py): (first, second).
SIDE_TRACING = ("side by side, tracing off", "side by side, tracing on")
SIDE_TRACING_ALL = ("side by side, tracing off vs 100%", "side by side, tracing 100%")
SIDE_METRICS = ("side by side, metrics on", "side by side, metrics off")
SIDE_CONTROL = ("side by side, tracing off", "side by side, control")  # the second stack as the first
SIDE_BASELINE = ("side by side, after", "side by side, before")  # this checkout, BENCH_BASELINE's
SECOND_STACK, SECOND_PREFIX = "second stack", "second "  # its honcho; its processes' labels start with "second "
# Batching off (the second stack, BATCHING_OFF) and on (the default stack, the defaults) in turn,
# interleaved with the floor (batching.py).
BATCH_OFF, BATCH_ON, BATCH_FLOOR = "batching off", "batching on", "floor, interleaved"
BATCHING_OFF = {"BATCH_MAX": "1", "CONSUMER_BATCH_MAX": "1"}  # 1: every order and event alone
FLOOR_APP = "floor app"  # the floor's processes' label
# On a 3-node RabbitMQ cluster of the bench's own, one and two instances of every service.
CLUSTER_1, CLUSTER_2 = "ours, cluster, 1 each", "ours, cluster, 2 each"
# POST at BENCH_OVERLOAD_CONNECTIONS, load shedding at its default bound and (practically) off, by
# clients that send again at once; and at its bound by clients that wait out Retry-After.
SHED_ON, SHED_OFF = "ours, shedding on", "ours, shedding off"
SHED_WAIT = "ours, shedding on, Retry-After honoured"
SHEDDING_OFF = {"GATEWAY_MAX_IN_FLIGHT": "100000"}  # the setting's maximum: never reached, today's behaviour
# What the event consumers cost per created order: the default stack, then with one webhook on order_created.
NO_WEBHOOK, ONE_WEBHOOK = "ours, no webhook", "ours, 1 webhook"
WEBHOOK_RECEIVER = "webhook receiver"  # where the webhook is delivered (tests/servers/webhook_receiver.py --discard)
MAIL_SINK = "mail sink"  # the SMTP server notification_service sends to (scripts/mail_sink.py --discard)
OTLP_RECEIVER = "otlp receiver"  # where the tracing cases export spans (tests/servers/otlp_receiver.py --discard)
# CPU that is not the system under test: the load generator, other load, the mail relay, the trace
# receiver, the webhook's subscriber.
NOT_THE_SYSTEM = {"load generator", "other", MAIL_SINK, OTLP_RECEIVER, WEBHOOK_RECEIVER}
# The servers both stacks of a side-by-side case use (the kernel's packet delivery serves them
# all alike), and all the CPU neither stack owns.
SHARED_SERVERS = ("postgres", "rabbitmq", KERNEL)
SHARED_LABELS = {*SHARED_SERVERS} | NOT_THE_SYSTEM
# Above this share of all CPUs busy with other processes, a case is flagged: the machine was not quiet.
OTHER_LOAD_WARNING = 0.10
ENDPOINTS = {
    "post_order": "POST /api/v1/orders",
    "get_order": "GET /api/v1/orders/{id}",
    "list_orders": "GET /api/v1/orders?customer_id=",
}
