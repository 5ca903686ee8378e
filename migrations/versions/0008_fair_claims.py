"""Fair shares among tenants: the claim reads each tenant's due jobs of a class as one index range

ix_job_next_poll_at_class_N (next_poll_at) becomes ix_job_tenant_next_poll_at_class_N (tenant_id,
next_poll_at), with the same WHERE: the claim takes each tenant's first n due jobs of each class and
lets tenants take turns within a class (app/store/polls.py, app/scheduling.py `fair_order`), so a
tenant with 10^5 due jobs does not hold back another's 20 (SPEC §8).

Only DROP INDEX and CREATE INDEX: SQLite keeps the job table (and its count triggers) as it is.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLASSES = (0, 1, 2)  # finish passed, running, queued (app/scheduling.py)


def _swap(old: str, new: str, columns: list[str]) -> None:
    for klass in CLASSES:
        where = sa.text(f"poll_class = {klass} AND next_poll_at IS NOT NULL")
        op.drop_index(f"{old}{klass}", table_name="job")
        op.create_index(f"{new}{klass}", "job", columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    _swap("ix_job_next_poll_at_class_", "ix_job_tenant_next_poll_at_class_", ["tenant_id", "next_poll_at"])


def downgrade() -> None:
    _swap("ix_job_tenant_next_poll_at_class_", "ix_job_next_poll_at_class_", ["next_poll_at"])
