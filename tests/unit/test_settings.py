"""Settings are read one way (common/contract/settings.py), checked together, and name what is wrong."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.contract.settings import Settings, SettingsError, load_settings
from tests import support

ROOT = Path(__file__).resolve().parents[2]


def test_config_yml_gives_every_setting_and_the_environment_wins():
    from_file = yaml.safe_load((ROOT / "config.yml").read_text())
    assert set(from_file) == set(Settings.variable_names())
    settings = load_settings({"RPC_TIMEOUT": "12.5", "LOG_LEVEL": "debug", "MAX_WORKERS": ""})
    assert settings.rpc_timeout == 12.5 and settings.log_level == "DEBUG"
    assert settings.max_workers == from_file["MAX_WORKERS"]  # an empty variable counts as unset
    assert settings.rpc_pool_size == settings.gateway_threads


@pytest.mark.parametrize("environ, named", [
    ({"RPC_TIMEOUT": "soon"}, "RPC_TIMEOUT: Input should be a valid number"),
    ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT: Input should be less than or equal to 65535"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL:"),
    ({"RESERVATION_GRACE_SECONDS": "20"}, "RESERVATION_GRACE_SECONDS (20) must exceed ORDER_CREATE_DEADLINE_SECONDS"),
    ({"SERVICE_RPC_TIMEOUT": "10"}, "SERVICE_RPC_TIMEOUT (10) must be below RPC_TIMEOUT"),
    ({"WEBHOOK_RETENTION_DAYS": "0.5"}, "WEBHOOK_RETENTION_DAYS: Input should be greater than or equal to 1"),
    ({"EVENT_MAX_RETRIES": "30"}, "WEBHOOK_RETENTION_DAYS (30) must exceed the 1.07374e+09 s an event can spend"),
    ({"ENV": "production"}, "ENV=production refuses the development JWT_SECRET"),
    ({"SMTP_PORT": "0"}, "SMTP_PORT: Input should be greater than or equal to 1"),
    ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS: Input should be a valid boolean"),
    ({"MAIL_FROM": "shop"}, "MAIL_FROM: must be an email address"),
    ({"NOTIFY_MAX_ATTEMPTS": "0"}, "NOTIFY_MAX_ATTEMPTS: Input should be greater than or equal to 1"),
    ({"SMTP_USERNAME": "shop"}, "SMTP_USERNAME and SMTP_PASSWORD: set both"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER:"),
    ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG: Input should be less than or equal to 1"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=orders,production"}, "OTEL_RESOURCE_ATTRIBUTES: must be key=value pairs"),
])
def test_a_bad_value_is_refused_naming_the_variable(environ, named):
    with pytest.raises(SettingsError) as error:
        load_settings(environ)
    assert named in str(error.value)


def test_secrets_are_never_echoed():
    with pytest.raises(SettingsError) as error:
        load_settings({"JWT_SECRET": "s3cr3t-value", "ENV": "staging"})
    assert "ENV:" in str(error.value) and "s3cr3t-value" not in str(error.value)


def test_the_smtp_password_is_never_echoed():
    with pytest.raises(SettingsError) as error:
        load_settings({"SMTP_PASSWORD": "hunter2-secret"})
    assert "SMTP_PASSWORD" in str(error.value) and "hunter2-secret" not in str(error.value)
    settings = load_settings({"SMTP_USERNAME": "shop", "SMTP_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in repr(settings) and settings.smtp_password.get_secret_value() == "hunter2-secret"


def test_mail_goes_to_the_local_sink_unless_smtp_host_is_set():
    assert load_settings({}).smtp_address == ("127.0.0.1", 1025)
    assert load_settings({"MAIL_SINK_PORT": "2525"}).smtp_address == ("127.0.0.1", 2525)
    assert load_settings({"SMTP_HOST": "relay.example", "SMTP_PORT": "587"}).smtp_address == ("relay.example", 587)


def test_otel_resource_attributes_are_read_as_the_sdk_reads_them():
    assert load_settings({}).otel_resource_attributes == {}
    assert load_settings({"OTEL_RESOURCE_ATTRIBUTES": " team = order%20desk ,deployment.environment=prod,"}
                         ).otel_resource_attributes == {"team": "order desk", "deployment.environment": "prod"}


def test_a_bare_postgresql_url_gets_the_psycopg2_driver():
    assert load_settings({"DATABASE_URL": "postgresql://u@h/db"}).database_url == "postgresql+psycopg2://u@h/db"


def test_an_unknown_key_in_the_file_is_refused(tmp_path):
    bad = tmp_path / "settings.yml"
    bad.write_text((ROOT / "config.yml").read_text() + "\nRPC_TIMOUT: 3\n")
    with pytest.raises(SettingsError, match="RPC_TIMOUT: not a setting"):
        load_settings({}, config_file=bad)


def test_only_the_settings_module_reads_the_environment():
    """Domain rules, storage, services and the gateway are handed their settings.
    (Setting a variable for a library, as gunicorn_conf does for prometheus-client, or handing the
    environment on to a child process is not reading one.)"""
    tracked = support.python_files()
    readers = [path for path in tracked
               if not path.startswith(("tests/", "bench/")) and path != "common/contract/settings.py"
               and re.search(r"os\.environ\.get|os\.environ\[[^\]]+\](?!\s*=[^=])|getenv\(",
                                    (ROOT / path).read_text())]
    assert readers == []


def test_a_service_refuses_to_start_on_a_bad_setting():
    result = subprocess.run([sys.executable, "-m", "common.kit.runner", "run", "order_service.service:OrderService"],
                            cwd=ROOT, env={"PATH": "/usr/bin:/bin", "ORDER_CREATE_DEADLINE_SECONDS": "-1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "ORDER_CREATE_DEADLINE_SECONDS: Input should be greater than 0" in result.stderr


def test_the_operations_guide_documents_every_setting():
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide[guide.index("## Configuration"):]
    section = section[:section.find("\n## ", 1)]
    table = "\n".join(line for line in section.splitlines() if line.startswith("| `"))
    missing = [name for name in Settings.variable_names() if f"`{name}`" not in table]
    assert missing == []


def test_staff_emails_are_comma_separated_addresses():
    assert load_settings({"STAFF_EMAILS": " stock@shop.example , Ops <ops@shop.example>,"}).staff_emails == (
        "stock@shop.example", "Ops <ops@shop.example>")
    assert load_settings({}).staff_emails == ()
    with pytest.raises(SettingsError, match="STAFF_EMAILS: .*not one: nobody"):
        load_settings({"STAFF_EMAILS": "stock@shop.example,nobody"})
