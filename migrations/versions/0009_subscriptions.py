"""One Akool job, many subscriptions: which subscription's row is polled for its Akool id

job.leads: of the unfinished subscriptions to one video_model_id (one per tenant), one leads: its
row is claimed and polled, and each answer is applied to the others (the followers) in the same
transaction (app/store/subscriptions.py, SPEC §8). Existing rows: where several tenants already
track one id, the oldest unfinished subscription leads and the others follow from now on (their
next poll is their deadline); every other row leads, as it did.

Only ADD COLUMN and UPDATE: SQLite keeps the job table (and its count triggers) as it is.

Revision ID: 0009
Revises: 0008_console
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008_console"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("leads", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.execute(
        """
        UPDATE job SET leads = false, next_poll_at = expires_at, claim_at = expires_at
        WHERE next_poll_at IS NOT NULL AND EXISTS (
            SELECT 1 FROM job AS first
            WHERE first.video_model_id = job.video_model_id
              AND first.next_poll_at IS NOT NULL AND first.id < job.id
        )
        """
    )


def downgrade() -> None:
    # Followers are polled on their own again, from now on.
    op.execute("UPDATE job SET next_poll_at = updated_at, claim_at = updated_at WHERE NOT leads")
    op.execute("ALTER TABLE job DROP COLUMN leads")
