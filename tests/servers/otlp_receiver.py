"""A small real OTLP/HTTP trace receiver: POST /v1/traces, protobuf, decoded with opentelemetry-proto.

    python -m tests.servers.otlp_receiver --port 4318     # prints a line per batch of spans received
    python -m tests.servers.otlp_receiver --discard       # answers every batch, decodes and keeps none

Tests run it in-process (`OtlpReceiver`) and look at the spans; the bench runs
it as a process with --discard so tracing can be measured while spans are
really exported, with the receiver's own work as small as a remote
collector's is to us (as the bench's mail sink discards mail).
"""
import argparse
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str     # the resource's service.name
    trace_id: str    # hex
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    kind: int        # opentelemetry.proto.trace.v1.Span.SpanKind
    resource: dict = field(default_factory=dict, compare=False)  # the resource's string attributes
    links: tuple = field(default=(), compare=False)  # (trace id, span id) of each span it links to


def decode(body):
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                links = tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links)
                spans.append(ReceivedSpan(attributes.get("service.name", ""), span.trace_id.hex(),
                                          span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
                                          attributes, links))
    return spans


class OtlpReceiver:
    """Listens on 127.0.0.1:`port` (0: any free port); `spans` grows as batches arrive."""

    def __init__(self, port=0, on_batch=None, discard=False):
        self.spans = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                if not discard:
                    batch = decode(body)
                    with receiver._lock:
                        receiver.spans.extend(batch)
                    if on_batch:
                        on_batch(batch)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def of_trace(self, trace_id):
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m tests.servers.otlp_receiver", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--discard", action="store_true", help="answer every batch; decode, keep and print nothing")
    args = parser.parse_args(argv)
    receiver = OtlpReceiver(args.port, discard=args.discard,
                            on_batch=lambda batch: print(f"received {len(batch)} spans", flush=True))
    print(f"OTLP/HTTP receiver on {receiver.endpoint}/v1/traces", flush=True)
    receiver.server.serve_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
