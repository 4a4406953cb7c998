"""notification_service.mail's SMTP sessions against a real (in-process) aiosmtpd server."""
import smtplib
from email.message import EmailMessage
from types import SimpleNamespace

import pytest

from common.contract.settings import SETTINGS_KEY
from notification_service import mail
from tests.support import SmtpServer, free_port
from tests.unit.fakes import SETTINGS


class CountingServer(SmtpServer):
    """Counts the connections it was asked for (each EHLO)."""

    def __init__(self):
        super().__init__()
        self.greetings = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.greetings += 1
        session.host_name = hostname
        return responses


@pytest.fixture
def server():
    running = CountingServer().start()
    yield running
    running.stop()


def mailer_for(port):
    settings = SETTINGS.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_timeout_seconds": 5})
    mailer = mail.Mailer()
    mailer.container = SimpleNamespace(config={SETTINGS_KEY: settings})
    mailer.setup()
    return mailer


def message(to, subject="Hello"):
    email = EmailMessage()
    email["From"], email["To"], email["Subject"] = "shop@example.com", to, subject
    email.set_content("Hello")
    return email


def test_one_connection_serves_several_batches(server):
    mailer = mailer_for(server.port)
    for n in range(3):
        with mailer.session() as smtp:
            smtp.send(message(f"c{n}@example.com"))
            smtp.send(message(f"d{n}@example.com"))
    assert len(server.messages) == 6 and server.greetings == 1
    mailer.stop()


def test_a_kept_connection_the_server_dropped_is_reopened_without_a_failed_attempt(server):
    mailer = mailer_for(server.port)
    with mailer.session() as smtp:
        smtp.send(message("first@example.com"))
    server.stop()
    server.start()  # every connection it had is gone
    with mailer.session() as smtp:
        smtp.send(message("second@example.com"))
    assert [m["rcpt_tos"] for m in server.messages] == [["first@example.com"], ["second@example.com"]]
    assert server.greetings == 2
    mailer.stop()


def test_an_unreachable_relay_fails_the_rest_of_the_batch_at_once_and_is_tried_again_next_batch():
    port = free_port()
    mailer = mailer_for(port)
    with mailer.session() as smtp:
        with pytest.raises(ConnectionRefusedError) as first:
            smtp.send(message("a@example.com"))
        with pytest.raises(ConnectionRefusedError) as second:
            smtp.send(message("b@example.com"))
        assert second.value is first.value  # not asked again
    later = CountingServer()
    later.port = port
    later.start()
    try:
        with mailer.session() as smtp:
            smtp.send(message("a@example.com"))
        assert len(later.messages) == 1
    finally:
        mailer.stop()
        later.stop()


def test_a_refused_recipient_leaves_the_connection_usable(server):
    server.refused.add("nobody@example.com")
    mailer = mailer_for(server.port)
    with mailer.session() as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.send(message("nobody@example.com"))
        smtp.send(message("somebody@example.com"))
    assert refused.value.recipients["nobody@example.com"][0] == 550
    assert [m["rcpt_tos"] for m in server.messages] == [["somebody@example.com"]] and server.greetings == 1
    mailer.stop()


def test_an_idle_connection_is_closed(server, monkeypatch):
    mailer = mailer_for(server.port)
    with mailer.session() as smtp:
        smtp.send(message("a@example.com"))
    mailer.close_idle()
    assert mailer._kept is not None  # just used
    monkeypatch.setattr(mail, "KEEP_IDLE_SECONDS", 0)
    mailer.close_idle()
    assert mailer._kept is None
