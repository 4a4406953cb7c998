"""Settings read from the environment, with the contract's defaults.

Nameko services read the same variables through config.yml; this module is
for the gateway, scripts and tests.
"""
import os
from dataclasses import dataclass

DEFAULT_AMQP_URI = "amqp://guest:guest@localhost:5672/"
DEFAULT_DATABASE_URL = "postgresql+psycopg2://postgres@localhost:5432/orders"
# Development default only: `make run` prints it, production must set JWT_SECRET.
DEVELOPMENT_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"


@dataclass(frozen=True)
class Settings:
    amqp_uri: str
    database_url: str
    gateway_port: int
    jwt_secret: str
    rpc_timeout: float
    log_level: str
    rpc_pool_size: int
    environment: str

    @classmethod
    def from_env(cls, env=None):
        env = os.environ if env is None else env
        return cls(
            amqp_uri=env.get("AMQP_URI", DEFAULT_AMQP_URI),
            database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            gateway_port=int(env.get("GATEWAY_PORT", "8000")),
            jwt_secret=env.get("JWT_SECRET", DEVELOPMENT_JWT_SECRET),
            rpc_timeout=float(env.get("RPC_TIMEOUT", "10")),
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            rpc_pool_size=int(env.get("RPC_POOL_SIZE", "16")),
            environment=env.get("ENV", "development").lower(),
        )

    def nameko_config(self):
        """The subset of nameko config a standalone RPC proxy needs."""
        return {"AMQP_URI": self.amqp_uri, "serializer": "json"}
