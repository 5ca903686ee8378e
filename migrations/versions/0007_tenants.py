"""Tenants: each client with its own tokens, webhook secrets and jobs (SPEC §8)

- tenant (with the built-in `default`, id 1, owning everything there is), tenant_token (SHA-256 of
  each token), tenant_secret (the generated webhook secret moves here from `setting`).
- job.tenant_id: a job is one tenant's subscription, unique per (tenant_id, video_model_id) instead of
  per video_model_id, so two tenants can track one Akool id. event.tenant_id (copied from its job),
  and status_count counts per tenant: the count triggers read the tenant off the row.
- SQLite cannot drop the job table's unnamed UNIQUE (video_model_id) in place: the table is rebuilt
  (new table, copy, drop, rename). A rebuild drops the table's indexes and triggers, so their SQL is
  read from sqlite_master first and run again afterwards; the count triggers are replaced anyway.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 00:00:00
"""

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

from app.models import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT = 1
SHARDS = 16  # PostgreSQL's counter shards (0002); SQLite uses shard 0 alone
COUNTED = (
    ("job", "status", ("pending", "queueing", "processing", "completed", "failed", "expired", "cancelled")),
    ("event", "state", ("pending", "retrying", "delivered", "dead")),
)
KEPT_SECRET = "webhook_secret"  # the `setting` row the generated secret was kept in


# -- PostgreSQL: 0003's counting functions, now per tenant -------------------------------------------
PG_COUNT_CHANGED = """
CREATE OR REPLACE FUNCTION relay_count_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_s text;
    new_s text;
    old_t int;
    new_t int;
    shard_no int := relay_count_shard();
BEGIN
    IF TG_OP <> 'INSERT' THEN old_s := to_jsonb(OLD) ->> TG_ARGV[0]; old_t := OLD.tenant_id; END IF;
    IF TG_OP <> 'DELETE' THEN new_s := to_jsonb(NEW) ->> TG_ARGV[0]; new_t := NEW.tenant_id; END IF;
    IF old_s IS NOT DISTINCT FROM new_s AND old_t IS NOT DISTINCT FROM new_t THEN RETURN NULL; END IF;
    IF new_s IS NULL OR (old_s IS NOT NULL AND old_s < new_s) THEN
        UPDATE status_count SET n = n - 1
         WHERE tenant_id = old_t AND kind = TG_TABLE_NAME AND status = old_s AND shard = shard_no;
        UPDATE status_count SET n = n + 1
         WHERE tenant_id = new_t AND kind = TG_TABLE_NAME AND status = new_s AND shard = shard_no;
    ELSE
        UPDATE status_count SET n = n + 1
         WHERE tenant_id = new_t AND kind = TG_TABLE_NAME AND status = new_s AND shard = shard_no;
        UPDATE status_count SET n = n - 1
         WHERE tenant_id = old_t AND kind = TG_TABLE_NAME AND status = old_s AND shard = shard_no;
    END IF;
    RETURN NULL;
END $$;
"""
PG_COUNT_INSERTED = """
CREATE OR REPLACE FUNCTION relay_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_no int := relay_count_shard();
BEGIN
    UPDATE status_count c SET n = c.n + d.k
      FROM (SELECT r.tenant_id AS t, to_jsonb(r) ->> TG_ARGV[0] AS s, count(*) AS k
              FROM new_rows r GROUP BY 1, 2) d
     WHERE c.tenant_id = d.t AND c.kind = TG_TABLE_NAME AND c.status = d.s AND c.shard = shard_no;
    RETURN NULL;
END $$;
"""
# 0003's, for the downgrade.
PG_COUNT_CHANGED_0003 = """
CREATE OR REPLACE FUNCTION relay_count_status() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_s text;
    new_s text;
    shard_no int := relay_count_shard();
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
PG_COUNT_INSERTED_0003 = """
CREATE OR REPLACE FUNCTION relay_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    shard_no int := relay_count_shard();
BEGIN
    UPDATE status_count c SET n = c.n + d.k
      FROM (SELECT to_jsonb(r) ->> TG_ARGV[0] AS s, count(*) AS k FROM new_rows r GROUP BY 1) d
     WHERE c.kind = TG_TABLE_NAME AND c.status = d.s AND c.shard = shard_no;
    RETURN NULL;
END $$;
"""


# The SQLite job table's edits (and, reversed, the downgrade's): a tenant_id column after the last
# column, and its unique constraint in place of UNIQUE (video_model_id).
SQLITE_TENANT_COLUMN = "tenant_id INTEGER DEFAULT '1' NOT NULL REFERENCES tenant (id), "
SQLITE_WITH_TENANT = [
    (r"(claim_at DATETIME, )(\s*PRIMARY KEY \(id\))", r"\1" + SQLITE_TENANT_COLUMN + r"\2"),
    (
        r"UNIQUE \(video_model_id\)",
        "CONSTRAINT uq_job_tenant_video_model_id UNIQUE (tenant_id, video_model_id)",
    ),
]

SQLITE_WITHOUT_TENANT = [
    (re.escape(SQLITE_TENANT_COLUMN), ""),
    (
        r"CONSTRAINT uq_job_tenant_video_model_id UNIQUE \(tenant_id, video_model_id\)",
        "UNIQUE (video_model_id)",
    ),
]


def sqlite_count_triggers(table: str, column: str, *, per_tenant: bool) -> list[str]:
    """0002's SQLite triggers (shard 0 holds the whole count), with the tenant condition when asked."""
    tenant = " AND tenant_id = {row}.tenant_id" if per_tenant else ""
    bump = (
        "UPDATE status_count SET n = n {sign} 1 WHERE kind = '{table}' AND status = {row}.{column}"
        + tenant
        + " AND shard = 0;"
    )
    plus = bump.format(sign="+", table=table, row="NEW", column=column)
    minus = bump.format(sign="-", table=table, row="OLD", column=column)
    changed = f"OLD.{column} IS NOT NEW.{column}" + (
        " OR OLD.tenant_id IS NOT NEW.tenant_id" if per_tenant else ""
    )
    of = f"{column}, tenant_id" if per_tenant else column
    return [
        f"CREATE TRIGGER {table}_count_insert AFTER INSERT ON {table} BEGIN {plus} END",
        f"CREATE TRIGGER {table}_count_update AFTER UPDATE OF {of} ON {table} WHEN {changed} BEGIN {minus} {plus} END",
        f"CREATE TRIGGER {table}_count_delete AFTER DELETE ON {table} BEGIN {minus} END",
    ]


def _drop_sqlite_count_triggers() -> None:
    for table, _, _ in COUNTED:
        for suffix in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_count_{suffix}")


def _edit_once(sql: str, pattern: str, replacement: str) -> str:
    edited, count = re.subn(pattern, replacement, sql)
    assert count == 1, f"the job table is not as the earlier migrations made it: {pattern!r}"
    return edited


def _rebuild_sqlite_job(edits: Sequence[tuple[str, str]]) -> None:
    """Rebuild `job` from its own CREATE TABLE, edited, keeping its rows, indexes and triggers.

    Columns both versions have are copied; one only the new version has takes its default."""
    bind = op.get_bind()
    edited = str(bind.scalar(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'job'")))
    for pattern, replacement in edits:
        edited = _edit_once(edited, pattern, replacement)
    extras = list(
        bind.scalars(
            sa.text(
                "SELECT sql FROM sqlite_master WHERE tbl_name = 'job' AND type IN ('index', 'trigger') "
                "AND sql IS NOT NULL ORDER BY type, name"
            )
        )
    )
    # A table renamed by SQLite is kept as `CREATE TABLE "job"`: the name may be quoted.
    op.execute(_edit_once(edited, r'^CREATE TABLE "?job"? \(', "CREATE TABLE job_rebuilt ("))
    kept = {c["name"] for c in sa.inspect(bind).get_columns("job_rebuilt")}
    columns = ", ".join(c["name"] for c in sa.inspect(bind).get_columns("job") if c["name"] in kept)
    op.execute(f"INSERT INTO job_rebuilt ({columns}) SELECT {columns} FROM job")
    # Dropping a parent table deletes its rows first: with foreign keys enforced, ON DELETE CASCADE
    # would empty transition and event. Our migration engine never turns them on; make sure.
    op.execute("PRAGMA foreign_keys = OFF")
    op.execute("DROP TABLE job")
    op.execute("ALTER TABLE job_rebuilt RENAME TO job")
    for statement in extras:
        op.execute(statement)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    op.create_table(
        "tenant",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    now = datetime.now(UTC).replace(tzinfo=None)
    op.get_bind().execute(
        sa.text("INSERT INTO tenant (id, name, disabled, created_at) VALUES (:id, 'default', :f, :now)"),
        {"id": DEFAULT_TENANT, "f": False, "now": now},
    )
    if not sqlite:  # the next tenant made gets id 2
        op.execute("SELECT setval(pg_get_serial_sequence('tenant', 'id'), 1)")
    op.create_table(
        "tenant_token",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=True),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_tenant_token_tenant_id", "tenant_token", ["tenant_id"])
    op.create_index("ix_tenant_token_revoked_at", "tenant_token", ["revoked_at"])
    op.create_table(
        "tenant_secret",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("valid_until", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenant.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_tenant_secret_tenant_id", "tenant_secret", ["tenant_id"])
    op.get_bind().execute(
        sa.text(
            "INSERT INTO tenant_secret (tenant_id, secret, created_at) "
            "SELECT :tenant, value, :now FROM setting WHERE key = :key"
        ),
        {"tenant": DEFAULT_TENANT, "now": now, "key": KEPT_SECRET},
    )
    op.get_bind().execute(sa.text("DELETE FROM setting WHERE key = :key"), {"key": KEPT_SECRET})

    # Idempotency keys become the tenant's own (app.store.creates.tenant_key): `1/<SHA-256 of the key>`.
    for (key,) in op.get_bind().execute(sa.text("SELECT key FROM akool_create")).all():
        op.get_bind().execute(
            sa.text("UPDATE akool_create SET key = :new WHERE key = :old"),
            {"new": f"{DEFAULT_TENANT}/{hashlib.sha256(key.encode()).hexdigest()}", "old": key},
        )

    # Counts per tenant: every count so far is the default tenant's.
    if sqlite:
        _drop_sqlite_count_triggers()  # they name status_count, which is rebuilt below
    op.rename_table("status_count", "status_count_0006")
    op.create_table(
        "status_count",
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "status", "shard"),
    )
    op.execute(
        f"INSERT INTO status_count (tenant_id, kind, status, shard, n) "
        f"SELECT {DEFAULT_TENANT}, kind, status, shard, n FROM status_count_0006"
    )
    op.drop_table("status_count_0006")

    if sqlite:
        _rebuild_sqlite_job(SQLITE_WITH_TENANT)
    else:
        unique = [
            c["name"]
            for c in sa.inspect(op.get_bind()).get_unique_constraints("job")
            if c["column_names"] == ["video_model_id"]
        ]
        for name in unique:
            op.drop_constraint(name, "job", type_="unique")
        op.add_column(
            "job",
            sa.Column(
                "tenant_id",
                sa.Integer(),
                sa.ForeignKey("tenant.id"),
                nullable=False,
                server_default=str(DEFAULT_TENANT),
            ),
        )
        op.create_unique_constraint("uq_job_tenant_video_model_id", "job", ["tenant_id", "video_model_id"])
    op.create_index("ix_job_video_model_id", "job", ["video_model_id"])
    op.create_index("ix_job_tenant_id_id", "job", ["tenant_id", "id"])
    op.create_index("ix_job_tenant_id_status_id", "job", ["tenant_id", "status", "id"])
    unfinished = sa.text("next_poll_at IS NOT NULL")
    op.create_index(
        "ix_job_tenant_unfinished_id",
        "job",
        ["tenant_id", "id"],
        postgresql_where=unfinished,
        sqlite_where=unfinished,
    )
    op.add_column(
        "event", sa.Column("tenant_id", sa.Integer(), nullable=False, server_default=str(DEFAULT_TENANT))
    )
    if sqlite:
        for table, column, _ in COUNTED:
            for statement in sqlite_count_triggers(table, column, per_tenant=True):
                op.execute(statement)
    else:
        op.execute(PG_COUNT_CHANGED)
        op.execute(PG_COUNT_INSERTED)


def downgrade() -> None:
    """Back to one tenant: refused while another tenant has jobs (they could not be told apart)."""
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    others = bind.scalar(sa.text(f"SELECT count(*) FROM job WHERE tenant_id <> {DEFAULT_TENANT}"))
    if others:
        raise RuntimeError(f"{others} jobs belong to tenants other than `default`: delete them first")
    if sqlite:
        _drop_sqlite_count_triggers()
    op.execute("ALTER TABLE event DROP COLUMN tenant_id")
    for index in ("ix_job_tenant_unfinished_id", "ix_job_tenant_id_status_id", "ix_job_tenant_id_id"):
        op.drop_index(index, table_name="job")
    op.drop_index("ix_job_video_model_id", table_name="job")
    if sqlite:
        _rebuild_sqlite_job(SQLITE_WITHOUT_TENANT)
    else:
        op.drop_constraint("uq_job_tenant_video_model_id", "job", type_="unique")
        op.drop_column("job", "tenant_id")
        op.create_unique_constraint(None, "job", ["video_model_id"])
    op.rename_table("status_count", "status_count_0007")
    op.create_table(
        "status_count",
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "status", "shard"),
    )
    op.execute(
        f"INSERT INTO status_count (kind, status, shard, n) "
        f"SELECT kind, status, shard, n FROM status_count_0007 WHERE tenant_id = {DEFAULT_TENANT}"
    )
    op.drop_table("status_count_0007")
    if sqlite:
        for table, column, _ in COUNTED:
            for statement in sqlite_count_triggers(table, column, per_tenant=False):
                op.execute(statement)
    else:
        op.execute(PG_COUNT_CHANGED_0003)
        op.execute(PG_COUNT_INSERTED_0003)
    bind.execute(
        sa.text(
            "INSERT INTO setting (key, value) SELECT :key, secret FROM tenant_secret "
            "WHERE tenant_id = :tenant AND valid_until IS NULL ORDER BY id DESC LIMIT 1"
        ),
        {"key": KEPT_SECRET, "tenant": DEFAULT_TENANT},
    )
    op.execute("DELETE FROM akool_create")  # keys kept hashed cannot be given back (they last 24 h)
    op.drop_table("tenant_secret")
    op.drop_table("tenant_token")
    op.drop_table("tenant")
