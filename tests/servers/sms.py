"""An SMS provider speaking Twilio's Messages API (scripts/sms_sink.py's handler), for tests of the SMS path."""
import threading

from scripts.sms_sink import Refusal, SmsServer
from tests.harness.ports import free_port
from tests.servers.waiting import first_matching

SID, TOKEN = "ACtest0000000000000000000000000000", "test-auth-token"


class SmsProvider:
    """Keeps every message it takes (`messages`: dicts with to, from, body, sid); refuses the Basic
    auth of anyone but SID:TOKEN (401); answers `outages` 503s before taking messages again
    (a provider down for a while), and 400 (Twilio's 21211: invalid To) to the numbers in `invalid`."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.messages = []
        self.outages = 0
        self.invalid = set()
        self.refused = []  # the messages answered with an error
        self._lock = threading.Lock()
        self._server = None

    def start(self):
        self._server = SmsServer("127.0.0.1", self.port, self._accept, credentials=(SID, TOKEN))
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _accept(self, message):
        with self._lock:
            if message["to"] in self.invalid:
                self.refused.append(message)
                raise Refusal(400, {"code": 21211, "message": f"The 'To' number {message['to']} is not valid."})
            if self.outages > 0:
                self.outages -= 1
                self.refused.append(message)
                raise Refusal(503, {"code": 20503, "message": "Service unavailable"})
            self.messages.append(message)

    def to(self, number):
        return [message for message in self.messages if message["to"] == number]

    def wait_for(self, predicate, timeout=20):
        return first_matching(self.messages, predicate, timeout, lambda: f"have {self.messages[-10:]}")
