"""Servers only the tests and the bench run: an SMTP server that keeps mail, an OTLP/HTTP trace receiver,
an HTTP server that receives webhook deliveries."""
