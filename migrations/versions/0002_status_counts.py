"""status counts kept by triggers, for a dashboard that does not count every row

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUSES = ("pending", "queueing", "processing", "completed", "failed", "expired", "cancelled")
EVENT_STATES = ("pending", "retrying", "delivered", "dead")
COUNTED = (("job", "status", JOB_STATUSES), ("event", "state", EVENT_STATES))
SHARDS = 16  # each count is spread over this many rows, so replicas rarely wait on one row lock

# PostgreSQL: one function for both tables (the counted column is the trigger's argument), on a
# random shard. The two counter rows are changed in alphabetical order of status, so transactions
# moving rows between the same statuses in opposite directions (delivery, redelivery) cannot deadlock.
PG_FUNCTION = f"""
CREATE FUNCTION relay_count_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_s text;
    new_s text;
    shard_no int := floor(random() * {SHARDS})::int;
BEGIN
    IF TG_OP <> 'INSERT' THEN old_s := to_jsonb(OLD) ->> TG_ARGV[0]; END IF;
    IF TG_OP <> 'DELETE' THEN new_s := to_jsonb(NEW) ->> TG_ARGV[0]; END IF;
    IF old_s IS NOT DISTINCT FROM new_s THEN RETURN NULL; END IF;
    IF new_s IS NULL OR (old_s IS NOT NULL AND old_s < new_s) THEN
        UPDATE status_count SET n = n - 1 WHERE kind = TG_TABLE_NAME AND status = old_s AND shard = shard_no;
        UPDATE status_count SET n = n + 1 WHERE kind = TG_TABLE_NAME AND status = new_s AND shard = shard_no;
    ELSE
        UPDATE status_count SET n = n + 1 WHERE kind = TG_TABLE_NAME AND status = new_s AND shard = shard_no;
        UPDATE status_count SET n = n - 1 WHERE kind = TG_TABLE_NAME AND status = old_s AND shard = shard_no;
    END IF;
    RETURN NULL;
END $$;
"""

# Inserts are counted once per statement, so registering a batch of 1000 jobs changes a counter
# once, not 1000 times (each change leaves a dead row version behind).
PG_INSERT_FUNCTION = f"""
CREATE FUNCTION relay_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_no int := floor(random() * {SHARDS})::int;  -- drawn once: random() in WHERE is per row
BEGIN
    UPDATE status_count c SET n = c.n + d.k
      FROM (SELECT to_jsonb(r) ->> TG_ARGV[0] AS s, count(*) AS k FROM new_rows r GROUP BY 1) d
     WHERE c.kind = TG_TABLE_NAME AND c.status = d.s AND c.shard = shard_no;
    RETURN NULL;
END $$;
"""


def _sqlite_triggers(table: str, column: str) -> list[str]:
    # SQLite has one writer at a time: no contention, so shard 0 holds the whole count.
    bump = "UPDATE status_count SET n = n {sign} 1 WHERE kind = '{table}' AND status = {row}.{column} AND shard = 0;"
    plus = bump.format(sign="+", table=table, row="NEW", column=column)
    minus = bump.format(sign="-", table=table, row="OLD", column=column)
    return [
        f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} BEGIN {plus} END",
        f"CREATE TRIGGER {table}_count_update AFTER UPDATE OF {column} ON {table} "
        f"WHEN OLD.{column} IS NOT NEW.{column} BEGIN {minus} {plus} END",
        f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} BEGIN {minus} END",
    ]


def upgrade() -> None:
    op.create_table(
        "status_count",
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "status", "shard"),
    )
    for table, column, values in COUNTED:
        for value in values:
            op.execute(
                sa.text(
                    f"INSERT INTO status_count (kind, status, shard, n) "
                    f"SELECT '{table}', '{value}', 0, count(*) FROM {table} WHERE {column} = '{value}'"
                )
            )
            for shard in range(1, SHARDS):
                op.execute(
                    sa.text(
                        f"INSERT INTO status_count (kind, status, shard, n) VALUES ('{table}', '{value}', {shard}, 0)"
                    )
                )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        op.execute(PG_INSERT_FUNCTION)
        for table, column, _ in COUNTED:
            op.execute(
                f"CREATE TRIGGER {table}_count AFTER UPDATE OF {column} OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION relay_count_status('{column}')"
            )
            op.execute(
                f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
                f"FOR EACH STATEMENT EXECUTE FUNCTION relay_count_inserted('{column}')"
            )
    else:
        for table, column, _ in COUNTED:
            for statement in _sqlite_triggers(table, column):
                op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, _, _ in COUNTED:
            op.execute(f"DROP TRIGGER {table}_count ON {table}")
            op.execute(f"DROP TRIGGER {table}_count_insert ON {table}")
        op.execute("DROP FUNCTION relay_count_status()")
        op.execute("DROP FUNCTION relay_count_inserted()")
    else:
        for table, _, _ in COUNTED:
            for suffix in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER {table}_count_{suffix}")
    op.drop_table("status_count")
