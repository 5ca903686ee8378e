"""The deployment's Akool budget: one token-bucket row every replica leases request slots from

akool_budget (id 1): the rate in force, the tokens at `refilled_at` (the database's clock; below zero
they count slots already leased ahead), `throttled_until` (a 1005's slow-down holds until then, then
the rate doubles back once per quiet cool-down) and `halved_at` (1005s within a second halve once).
The row is written by the first lease (app/store/budget.py); SQLite keeps the table unused.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "akool_budget",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("refilled_at", UTCDateTime(), nullable=False),
        sa.Column("throttled_until", UTCDateTime(), nullable=True),
        sa.Column("halved_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("akool_budget")
