"""A real SMTP server (aiosmtpd) that keeps what it accepts, for tests of the mail path."""

from tests.harness.ports import free_port
from tests.servers.waiting import first_matching


class SmtpServer:
    """A real SMTP server (aiosmtpd) on a port of its own, run by the test process.

    Keeps every message it accepts in memory (`messages`: dicts with the
    envelope's `mail_from` and `rcpt_tos` and the parsed `message`), answers
    `550` to the recipients in `refused`, and can be stopped and started again
    on the same port (an outage, as the notification service sees it).
    """

    REFUSAL = "550 5.1.1 Recipient address rejected: User unknown in virtual mailbox table"

    def __init__(self, port=None):
        self.port = port or free_port()
        self.messages = []
        self.refused = set()
        self._controller = None

    def start(self):
        from aiosmtpd.controller import Controller

        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refused:
            return self.REFUSAL
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        from email import policy
        from email.parser import BytesParser

        self.messages.append({"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                              "message": BytesParser(policy=policy.default).parsebytes(envelope.original_content)})
        return "250 Message accepted for delivery"

    def to(self, address):
        """The messages whose envelope names `address`."""
        return [m for m in self.messages if address in m["rcpt_tos"]]

    def wait_for(self, predicate, timeout=20):
        """The first message `predicate` accepts, waiting up to `timeout` seconds."""
        return first_matching(self.messages, predicate, timeout, lambda: (
            f"have {len(self.messages)}: {[(m['rcpt_tos'], str(m['message']['Subject'])) for m in self.messages[-10:]]}"))
