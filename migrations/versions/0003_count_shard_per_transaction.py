"""status counts: one shard per transaction (PostgreSQL)

A shard drawn per row let one transaction that changes many rows (a batch of poll results, a batch
registration) hold counter rows of several shards while it waits for the next one; two or three such
transactions from different replicas could wait on each other, and PostgreSQL aborted one as a
deadlock (seen in the three-replica test). Now a transaction draws its shard once and keeps it, so
transactions on different shards never touch the same counter row. Those that do share a shard can
still meet; Database.run runs an aborted transaction again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 20:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SHARDS = 16  # as in 0002

# The shard is kept in a transaction-local setting (set_config(..., true) ends with the transaction).
PG_SHARD_FUNCTION = f"""
CREATE FUNCTION relay_count_shard() RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    s text := current_setting('relay.count_shard', true);
BEGIN
    IF s IS NULL OR s = '' THEN
        s := floor(random() * {SHARDS})::int::text;
        PERFORM set_config('relay.count_shard', s, true);
    END IF;
    RETURN s::int;
END $$;
"""

SHARD_PER_ROW = f"floor(random() * {SHARDS})::int"
SHARD_PER_TRANSACTION = "relay_count_shard()"

# 0002's two counting functions, with the shard expression as a parameter (otherwise unchanged).
COUNT_CHANGED = """
CREATE OR REPLACE FUNCTION relay_count_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_s text;
    new_s text;
    shard_no int := {shard};
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
COUNT_INSERTED = """
CREATE OR REPLACE FUNCTION relay_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_no int := {shard};
BEGIN
    UPDATE status_count c SET n = c.n + d.k
      FROM (SELECT to_jsonb(r) ->> TG_ARGV[0] AS s, count(*) AS k FROM new_rows r GROUP BY 1) d
     WHERE c.kind = TG_TABLE_NAME AND c.status = d.s AND c.shard = shard_no;
    RETURN NULL;
END $$;
"""


def _functions(shard: str) -> list[str]:
    return [COUNT_CHANGED.format(shard=shard), COUNT_INSERTED.format(shard=shard)]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has one writer at a time and a single shard
    op.execute(PG_SHARD_FUNCTION)
    for statement in _functions(SHARD_PER_TRANSACTION):
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _functions(SHARD_PER_ROW):
        op.execute(statement)
    op.execute("DROP FUNCTION relay_count_shard()")
