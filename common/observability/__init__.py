"""Logs (JSON lines), metrics (Prometheus) and traces (OpenTelemetry) of every process."""
