"""The `akool_budget` row (id 1) on PostgreSQL: one token bucket for every replica's Akool requests.

`BudgetRow.lease()` is one UPDATE … RETURNING in autocommit (one round trip, the row locked for that
statement only). Everything it decides is computed on the database's clock (`clock_timestamp()`), never on a
replica's: it refills the bucket for the time passed, applies a halving (1005) or the quiet cool-downs
that passed, and grants up to `want` request slots, none further than `horizon` seconds ahead. What
the slots mean and how a replica spends them is app/worker/budget.py's business.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import Database

# Parameters go through one CTE, each cast once, so asyncpg never has to guess a type.
LEASE_SQL = sa.text(
    """
WITH p AS (
    SELECT CAST(:want AS integer) AS want, CAST(:min_grant AS integer) AS min_grant,
           CAST(:base AS double precision) AS base, CAST(:halve AS boolean) AS halve,
           CAST(:cooldown AS double precision) AS cooldown, CAST(:debounce AS double precision) AS debounce,
           CAST(:floor AS double precision) AS floor, CAST(:horizon AS double precision) AS horizon
), cur AS (
    SELECT rate, tokens, refilled_at, throttled_until, halved_at
    FROM akool_budget WHERE id = 1
    FOR UPDATE
), t AS (  -- the database's now, read once the row is ours (never before the last refill)
    SELECT cur.*, p.*,
           GREATEST(CAST(clock_timestamp() AT TIME ZONE 'UTC' AS timestamp), cur.refilled_at) AS now,
           LEAST(cur.rate, p.base) AS r0
    FROM cur, p
), s AS (
    SELECT t.*,
           CAST(EXTRACT(EPOCH FROM now - refilled_at) AS double precision) AS elapsed,
           (halve AND (halved_at IS NULL OR now >= halved_at + make_interval(secs => debounce))) AS halving,
           CASE WHEN throttled_until IS NOT NULL AND now >= throttled_until
                THEN LEAST(64, FLOOR(CAST(EXTRACT(EPOCH FROM now - throttled_until) AS double precision)
                                     / cooldown) + 1)
                ELSE 0 END AS steps
    FROM t
), r AS (  -- the rate in force from now on
    SELECT s.*,
           CASE WHEN halving THEN GREATEST(base * floor, r0 / 2)
                WHEN halve THEN r0
                WHEN throttled_until IS NULL THEN base
                WHEN steps > 0 THEN LEAST(base, r0 * power(2, steps))
                ELSE r0 END AS r1,
           LEAST(1.0, tokens + r0 * elapsed) AS filled
    FROM s
), g AS (
    SELECT r.*,
           -- slots leased ahead keep their times when the rate changes: the debt is rescaled
           CASE WHEN filled < 0 THEN filled * r1 / r0 ELSE filled END AS t1,
           CASE WHEN halve THEN now + make_interval(secs => cooldown)
                WHEN r1 >= base THEN NULL
                WHEN steps > 0 THEN throttled_until + make_interval(secs => steps * cooldown)
                ELSE throttled_until END AS until1,
           CASE WHEN halving THEN now ELSE halved_at END AS halved1
    FROM r
), n AS (  -- slot k is due (k - t1) / r1 seconds from now: grant those within the horizon
    SELECT g.*, CAST(GREATEST(0, LEAST(want, FLOOR(t1 + horizon * r1))) AS integer) AS fits FROM g
), d AS (
    SELECT n.*, CASE WHEN fits >= LEAST(want, min_grant) THEN fits ELSE 0 END AS granted FROM n
)
UPDATE akool_budget AS b
SET rate = d.r1, tokens = d.t1 - d.granted, refilled_at = d.now,
    throttled_until = d.until1, halved_at = d.halved1
FROM d
WHERE b.id = 1
RETURNING d.granted, d.t1, d.r1,
          CAST(EXTRACT(EPOCH FROM d.until1 - d.now) AS double precision) AS throttled_for,
          CAST(EXTRACT(EPOCH FROM d.now - d.halved1) AS double precision) AS halved_ago
"""
)

CREATE_SQL = sa.text(
    """
INSERT INTO akool_budget (id, rate, tokens, refilled_at)
VALUES (1, CAST(:base AS double precision), 1, CAST(clock_timestamp() AT TIME ZONE 'UTC' AS timestamp))
ON CONFLICT (id) DO NOTHING
"""
)


@dataclass(frozen=True)
class Grant:
    """What one lease got, in seconds relative to the database's now at the lease."""

    granted: int  # request slots leased
    tokens: float  # the bucket before the grant (≤ 1; below 0: slots already leased ahead)
    rate: float  # the rate in force
    throttled_for: float | None  # seconds until the slow-down may relax (None: not throttled)
    halved_ago: float | None  # seconds since the last halving (None: never)


@dataclass(frozen=True)
class LeaseTerms:
    """How a lease is sized and how a 1005 counts (app/worker/budget.py sets these)."""

    base: float  # RELAY_AKOOL_RATE_LIMIT of the replica asking
    cooldown: float  # RELAY_THROTTLE_COOLDOWN
    debounce: float  # 1005s closer together than this halve the rate once
    floor: float  # the rate never goes below base × floor
    horizon: float  # no slot is granted further ahead than this (seconds)


class BudgetRow:
    """The row, reached over a connection of its own: a lease never waits for the replica's pool
    behind claims and result writes (measured with three replicas on a loaded machine: leases that
    queued for the shared pool took ~0.35 s, which held a lone replica to half the budget)."""

    def __init__(self, db: Database) -> None:
        self._engine = create_async_engine(db.url, pool_size=1, max_overflow=0)

    async def lease(self, terms: LeaseTerms, *, want: int, min_grant: int, halve: bool) -> Grant:
        """Lease up to `want` slots (none when fewer than min(want, min_grant) fit within the
        horizon); `halve`: a 1005 was seen. `want=0` only records a 1005 and reads the rate in force."""
        params = {
            "want": want,
            "min_grant": min_grant,
            "base": terms.base,
            "halve": halve,
            "cooldown": terms.cooldown,
            "debounce": terms.debounce,
            "floor": terms.floor,
            "horizon": terms.horizon,
        }
        async with self._engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await conn.execute(LEASE_SQL, params)).first()
            if row is None:  # the first lease of a fresh database: make the row (a full bucket)
                await conn.execute(CREATE_SQL, {"base": terms.base})
                row = (await conn.execute(LEASE_SQL, params)).one()
        granted, tokens, rate, throttled_for, halved_ago = row
        return Grant(int(granted), float(tokens), float(rate), throttled_for, halved_ago)

    async def close(self) -> None:
        await self._engine.dispose()
