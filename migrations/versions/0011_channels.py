"""every event and channel of the order flow

- orders: a status change's reason, in the order's history.
- notifications: staff alerts, which are for no customer; the customer
  directory keeps how to reach each customer (phone, preferences, push);
  a notification is one per (event, channel, recipient): email, sms, push.
- customers: a phone number, notification preferences, Web Push subscriptions.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("order_status_history", sa.Column("reason", sa.Text), schema="orders")
    op.alter_column("notifications", "customer_id", nullable=True, schema="notifications")
    op.add_column("known_customers", sa.Column("contacts", JSONB), schema="notifications")
    _notifications_upgrade()
    _customers_upgrade()


def downgrade():
    _notifications_downgrade()
    _customers_downgrade()
    op.drop_column("known_customers", "contacts", schema="notifications")
    op.execute("DELETE FROM notifications.notifications WHERE customer_id IS NULL")
    op.alter_column("notifications", "customer_id", nullable=False, schema="notifications")
    op.drop_column("order_status_history", "reason", schema="orders")


def _customers_upgrade():
    op.add_column("customers", sa.Column("phone", sa.String(16)), schema="customers")
    op.add_column("customers", sa.Column("notification_preferences", JSONB, nullable=False, server_default=sa.text(
        """'{"email": true, "sms": false, "push": false}'::jsonb""")), schema="customers")
    op.create_table(
        "push_subscriptions",
        sa.Column("id", UUID(as_uuid=True), primary_key=True),
        sa.Column("customer_id", UUID(as_uuid=True), sa.ForeignKey("customers.customers.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("p256dh", sa.String(200), nullable=False),
        sa.Column("auth", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("customer_id", "endpoint", name="push_subscriptions_customer_endpoint_key"),
        schema="customers",
    )


def _customers_downgrade():
    op.drop_table("push_subscriptions", schema="customers")
    op.drop_column("customers", "notification_preferences", schema="customers")
    op.drop_column("customers", "phone", schema="customers")


NOTIFICATIONS = "notifications"


def _notifications_upgrade():
    op.add_column("notifications", sa.Column("channel", sa.String(8), nullable=False, server_default="email"),
                  schema=NOTIFICATIONS)
    op.create_check_constraint("notification_channel", "notifications", "channel IN ('email', 'sms', 'push')",
                               schema=NOTIFICATIONS)
    op.alter_column("notifications", "recipient", type_=sa.Text, schema=NOTIFICATIONS)
    op.alter_column("notifications", "message_id", nullable=True, schema=NOTIFICATIONS)
    op.add_column("notifications", sa.Column("push_subscription", JSONB), schema=NOTIFICATIONS)
    op.drop_constraint("notifications_event_recipient_key", "notifications", schema=NOTIFICATIONS, type_="unique")
    op.create_unique_constraint("notifications_event_channel_recipient_key", "notifications",
                                ["event_id", "channel", "recipient"], schema=NOTIFICATIONS)


def _notifications_downgrade():
    op.execute("DELETE FROM notifications.notifications WHERE channel <> 'email'")
    op.drop_constraint("notifications_event_channel_recipient_key", "notifications", schema=NOTIFICATIONS,
                       type_="unique")
    op.create_unique_constraint("notifications_event_recipient_key", "notifications", ["event_id", "recipient"],
                                schema=NOTIFICATIONS)
    op.drop_column("notifications", "push_subscription", schema=NOTIFICATIONS)
    op.alter_column("notifications", "message_id", nullable=False, schema=NOTIFICATIONS)
    op.alter_column("notifications", "recipient", type_=sa.String(254), schema=NOTIFICATIONS)
    op.drop_constraint("notification_channel", "notifications", schema=NOTIFICATIONS, type_="check")
    op.drop_column("notifications", "channel", schema=NOTIFICATIONS)
