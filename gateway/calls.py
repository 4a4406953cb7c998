"""What the outcome of an RPC call means for the HTTP answer.

Every route calls services through `read` or `write`; both carry the
request's id, caller (signed as it is sent: common/kit/rpc.py) and deadline, record the call's metrics and span, and
turn a call that got no answer into the one error the contract names:
- a read with no answer in time: 504 upstream_timeout (nothing was changed);
- a write is 503 only when the request never reached a service, or a service
  refused it before changing anything (ServiceUnavailable passes through);
  when nobody can tell whether the change was made (no reply in time, the
  deadline passed, a COMMIT cut off), 504 outcome_unknown naming the
  resource: from RPC_TIMEOUT seconds after that answer on, reading it tells,
  and keeps telling the same;
- a write marked `redrive` (idempotent per attempt: a create, a change to an
  order) is sent again while the deadline allows when its reply was lost
  (gateway/rpc_pool.py);
- an order create joins the process's batches (gateway/batching.py) when
  BATCH_MAX > 1, with the same rules for its own outcome.
- a call to a service whose circuit is open (gateway/edge/breakers.py) is
  refused at once: 503 service_unavailable with Retry-After, nothing sent.
"""
import contextlib
import time

from flask import current_app, g

from common.contract.caller import CALLER_KEY, ENTRY_METHOD, SERVICE, Caller, entry_digest, sign_caller
from common.contract.context import REQUEST_ID_KEY
from common.contract.errors import DeadlineExceeded, FailureNotRecorded, OutcomeUnknown, UpstreamTimeout, from_outcome
from common.contract.services import GATEWAY
from common.observability import tracing
from gateway import metrics
from gateway.rpc_pool import REDRIVE_PAUSE_SECONDS, NoAnswer

# The gateway asking on its own behalf (GET /health, API key lookups, a batch of creates).
GATEWAY_CALLER = Caller(sub=GATEWAY, role=SERVICE)


def read(service, method, *args, as_caller=None, **kwargs):
    """service.method(...) for a read: no answer in time is 504 upstream_timeout.
    `as_caller`: the Caller the call is made as (default: the request's)."""
    try:
        return _call(service, method, args, kwargs, as_caller=as_caller)
    except (NoAnswer, DeadlineExceeded):
        raise UpstreamTimeout("A service did not answer in time.",
                              {"timeout_seconds": current_app.config["RPC_TIMEOUT"]}) from None


def write(resource, service, method, *args, redrive=False, **kwargs):
    """service.method(...) for a write to `resource` ({"order_id": ...}): see the module's rules.

    `redrive`: the call is idempotent per attempt, so it is sent again while
    the deadline allows when its reply was lost.
    """
    try:
        return _call(service, method, args, kwargs, redrive=redrive)
    except (NoAnswer, DeadlineExceeded, OutcomeUnknown) as exc:
        raise _unknown(resource, exc) from None


def create_order(body, idempotency_key, order_id):
    """order_service.create_order of this request (its order id fixed before the call), in a
    batch with the process's other creates when batching is on; outcomes as for `write`."""
    batches = current_app.extensions.get("create_batches")
    if batches is None:
        return write({"order_id": order_id}, "order_service", "create_order", body,
                     idempotency_key=idempotency_key, attempt_id=order_id, redrive=True)
    try:
        with _breaker("order_service", "create_order"), tracing.client_span("order_service", "create_order"):
            # The entry's caller is signed for this entry: the batch's own message is signed as the gateway.
            caller = sign_caller(current_app.config["CALLER_SIGNING_KEY"], g.caller.to_context(), ENTRY_METHOD,
                                 entry_digest(body, idempotency_key, order_id))
            entry = {"attempt_id": order_id, "data": body, "idempotency_key": idempotency_key,
                     "caller": caller, "request_id": g.request_id, "deadline": g.deadline,
                     "traceparent": tracing.current_traceparent()}
            return _until_answered(batches, entry)
    except (NoAnswer, DeadlineExceeded, OutcomeUnknown) as exc:
        raise _unknown({"order_id": order_id}, exc) from None


def _until_answered(batches, entry):
    """The entry's order, or its error raised; sent again while its failure was not made final
    (FailureNotRecorded: another run of it may still make the order) and its deadline allows."""
    pause = REDRIVE_PAUSE_SECONDS[0]
    while True:
        outcome = batches.create(entry)
        if "order" in outcome:
            return outcome["order"]
        error = from_outcome(outcome)
        left = entry["deadline"] - time.time()
        if not isinstance(error, FailureNotRecorded) or left <= pause:
            raise error
        time.sleep(pause)
        pause = min(pause * 2, REDRIVE_PAUSE_SECONDS[1])


def _unknown(resource, exc):
    return OutcomeUnknown("The change may or may not have been made: read the resource (from RPC_TIMEOUT "
                          "seconds after this answer it no longer changes) before sending it again.",
                          {**resource, "reason": _reason(exc)})


def _call(service, method, args, kwargs, redrive=False, as_caller=None):
    context = {REQUEST_ID_KEY: g.request_id}
    caller = as_caller or g.get("caller")
    if caller is not None:
        context[CALLER_KEY] = caller.to_context()
    started, outcome = time.perf_counter(), "ok"
    with _breaker(service, method), tracing.client_span(service, method):
        try:
            return current_app.extensions["rpc_pool"].call(
                service, method, args, kwargs, context_data=tracing.with_traceparent(context),
                deadline=g.deadline, redrive=redrive)
        except NoAnswer:
            outcome = "no_answer"
            raise
        except Exception as exc:
            outcome = getattr(exc, "code", "error")
            raise
        finally:
            metrics.record_rpc(service, method, outcome, time.perf_counter() - started)


# GET /health asks every service how it is, whatever its circuit says: it reports, and never opens it.
UNGUARDED_METHODS = frozenset({"health"})


def _breaker(service, method):
    breakers = current_app.extensions.get("breakers")
    if breakers is None or method in UNGUARDED_METHODS:
        return contextlib.nullcontext()
    return breakers.of(service).guard()


def _reason(exc):
    """Why the outcome is unknown, as outcome_unknown's `details.reason` says."""
    if isinstance(exc, OutcomeUnknown):
        return exc.details.get("reason", "commit_interrupted")
    return "deadline_passed" if isinstance(exc, DeadlineExceeded) else "no_reply"
