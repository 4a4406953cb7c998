"""Emails: rendered from templates, built as multipart messages, sent over SMTP.

- `render(kind, context)`: the plain-text and HTML bodies from
  `templates/<kind>.txt` and `templates/<kind>.html` (Jinja2; the HTML is
  autoescaped, so a customer named `<script>` is shown, never run).
- `build_message(notification, mail_from)`: a multipart/alternative
  EmailMessage (text first, HTML preferred) with the notification's stored
  subject, recipient and Message-ID.
- `Mailer`: the service's SMTP relay (SMTP_* settings) as a Nameko
  dependency; `with self.mailer.session() as smtp: smtp.send(message)` sends
  several messages over one connection, opened on first use and kept for the
  next batch while it is busy. smtplib is the standard library's and green
  under eventlet.
"""
import smtplib
import ssl
import threading
import time
from contextlib import contextmanager
from email.contentmanager import raw_data_manager
from email.message import EmailMessage
from email.policy import compat32
from email.utils import formatdate
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from nameko.extensions import DependencyProvider

from common.contract.settings import settings_of

TEMPLATES = Path(__file__).with_name("templates")
# A connection to the relay no batch has used for this long is closed (relays drop idle
# clients after a few minutes: RFC 5321 suggests 5).
KEEP_IDLE_SECONDS = 30
_templates = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    # A field an event leaves out (an address without line2) or sends as null renders as nothing.
    finalize=lambda value: "" if value is None else value,
    trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)


def render(kind, context):
    """(text body, HTML body) of an email of `kind` (see common.schemas.NOTIFICATION_KINDS)."""
    return (_templates.get_template(f"{kind}.txt").render(context),
            _templates.get_template(f"{kind}.html").render(context))


def build_message(notification, mail_from):
    """The email of a stored notification; the same on every attempt but for its Date."""
    headers = {
        "From": mail_from,
        "To": notification.recipient,
        "Subject": notification.subject,
        "Message-ID": notification.message_id,
        "Date": formatdate(usegmt=True),
        "Auto-Submitted": "auto-generated",  # RFC 3834: no auto-replies, please
    }
    # The modern policy parses and refolds every header through email.headerregistry: 2-3 ms of
    # CPU per message here, most of the sender's. ASCII-only headers (ours, unless MAIL_FROM or an
    # address is internationalized) need none of that: compat32 writes them as they are, about
    # four times faster. The bodies are encoded the same way under either policy.
    ascii_only = all(value.isascii() for value in headers.values())
    message = EmailMessage(policy=compat32) if ascii_only else EmailMessage()
    for name, value in headers.items():
        message[name] = value
    message.set_content(notification.body_text, content_manager=raw_data_manager)
    message.add_alternative(notification.body_html, subtype="html", content_manager=raw_data_manager)
    return message


class SmtpSession:
    """One connection to the relay for a batch of messages, opened on first use.

    Once the relay could not be reached (or refused the login), the rest of
    the batch fails the same way at once: a relay that is down is not asked
    again for every message, which would hold the batch for a timeout each.
    A server that hangs up mid-batch is reconnected to for the next message.
    The Mailer keeps a session's connection for the next batch while it is
    used often; a kept connection the server has closed meanwhile is
    reopened, and the message sent on the new one, at no attempt's cost.
    """

    def __init__(self, settings):
        self._settings = settings
        self._smtp = None
        self._broken = None
        self._reused = False
        self.last_used = time.monotonic()

    @property
    def connected(self):
        return self._smtp is not None

    def start_batch(self):
        """A new batch: a failure to connect in the last one is tried again."""
        self._broken = None
        self._reused = self._smtp is not None

    def send(self, message):
        """Send `message`; raises what smtplib raises (see domain.classify_send_error)."""
        if self._broken is not None:
            raise self._broken
        reused, self._reused = self._reused, False
        if self._smtp is None:
            try:
                self._smtp = self._connect()
            except (OSError, smtplib.SMTPException) as exc:
                self._broken = exc
                raise
        try:
            self._smtp.send_message(message)
        except smtplib.SMTPServerDisconnected:
            self._smtp = None
            if not reused:
                raise
            return self.send(message)  # the kept connection had been closed by the server: once more, anew
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused):
            # The session stays usable (smtplib has sent RSET) for the next message.
            raise
        except (OSError, smtplib.SMTPException):
            self.close()
            if not reused:
                raise
            return self.send(message)
        finally:
            self.last_used = time.monotonic()

    def close(self):
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()

    def _connect(self):
        settings = self._settings
        host, port = settings.smtp_address
        smtp = smtplib.SMTP(host, port, timeout=settings.smtp_timeout_seconds)
        try:
            smtp.ehlo()
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if settings.smtp_username is not None:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
        except BaseException:
            smtp.close()
            raise
        return smtp


class Mailer(DependencyProvider):
    """`self.mailer` in a worker: `with self.mailer.session() as smtp: smtp.send(message)`.

    Between batches it keeps the connection open for up to KEEP_IDLE_SECONDS
    (one connection, EHLO, STARTTLS and login for many emails, not one each);
    `close_idle()` closes it after that.
    """

    def setup(self):
        self.settings = settings_of(self.container)
        self._kept = None
        self._lock = threading.Lock()

    def get_dependency(self, worker_ctx):
        return self

    @contextmanager
    def session(self):
        with self._lock:
            smtp, self._kept = self._kept, None
        smtp = smtp or SmtpSession(self.settings)
        smtp.start_batch()
        try:
            yield smtp
        except BaseException:
            smtp.close()
            raise
        with self._lock:
            if smtp.connected and self._kept is None:
                smtp, self._kept = None, smtp
        if smtp is not None:
            smtp.close()

    def close_idle(self):
        """Close the kept connection if no batch has used it for KEEP_IDLE_SECONDS."""
        with self._lock:
            smtp = self._kept
            if smtp is None or time.monotonic() - smtp.last_used < KEEP_IDLE_SECONDS:
                return
            self._kept = None
        smtp.close()

    def stop(self):
        with self._lock:
            smtp, self._kept = self._kept, None
        if smtp is not None:
            smtp.close()

    kill = stop
