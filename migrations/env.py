"""One Alembic history for the whole database; each service owns one schema."""
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

import common  # noqa: F401  (quietens eventlet's notice before services import it)
from common.contract.settings import load_settings
from customer_service.storage import CustomersBase
from inventory_service.storage import InventoryBase
from invoice_service.storage import InvoicesBase
from notification_service.storage import NotificationsBase
from order_service.storage import OrdersBase
from webhook_service.storage import WebhooksBase

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = [CustomersBase.metadata, InventoryBase.metadata, OrdersBase.metadata,
                   NotificationsBase.metadata, InvoicesBase.metadata, WebhooksBase.metadata]


def database_url():
    return config.get_main_option("sqlalchemy.url") or load_settings().database_url


def run_migrations_offline():
    context.configure(url=database_url(), target_metadata=target_metadata,
                      literal_binds=True, include_schemas=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          include_schemas=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
