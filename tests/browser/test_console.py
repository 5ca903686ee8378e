"""The console (SPEC §9, issue 13) as a person sees it, in Chromium: a real relay over loopback HTTP
with the simulator and a real callback receiver, driven step by step; the checks read the DOM.

Every test's tab also checks, on leaving (tests/browser/conftest.py), that no request left for
another host, no dialog opened, and the page raised no error and broke no CSP rule. Screenshots
of each view go to tests/artifacts/ (git-ignored); docs/console-overview.png is a copy of the
overview's.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col

from app.models import Attempt, Event, Job, Transition
from app.sandbox.receiver import Behaviour, Receiver
from app.sandbox.serving import serve_in_background
from app.sandbox.simulator import ManualClock, Simulator
from tests.browser.conftest import STEP_MS, ConsoleFactory
from tests.support.receivers import scripted
from tests.support.relay import (
    DUE_AT_ONCE,
    HOOK,
    PAST_THE_END,
    RelayFactory,
    RunningRelay,
    deliver,
    detail,
    drain,
    poll,
    register,
)
from tests.support.tenants import ADMIN, AS_ADMIN, bearer, make_tenant

DEFAULT_TOKEN = "default-token-for-console-tests-0123456789"
CONSOLE = Path(__file__).resolve().parents[2] / "app" / "console"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture
def expect(browser: Any) -> Any:
    """playwright's expect (imported once the `browser` fixture knows playwright is there)."""
    from playwright.async_api import expect

    expect.set_options(timeout=STEP_MS)
    return expect


async def track(r: RunningRelay, token: str, vid: str, url: str = HOOK, **extra: Any) -> None:
    made = await r.client.post(
        "/jobs", json={"video_model_id": vid, "callback_url": url, **extra}, headers=bearer(token)
    )
    assert made.status_code == 201, made.text


async def finish(r: RunningRelay, clock: ManualClock) -> None:
    """Every registered job seen by Akool, then past its end, and every callback sent or dead."""
    await poll(r)
    clock.advance(PAST_THE_END)
    await poll(r)
    await drain(r)


async def log_in(c: Any, expect: Any, token: str) -> None:
    await expect(c.page.locator("#login")).to_be_visible()
    await c.page.fill("#token", token)
    await c.page.click("#login button[type=submit]")
    await expect(c.page.locator("header .who")).to_be_visible()


# --- served as it should be ---------------------------------------------------------------------


async def test_the_console_is_served_with_a_strict_policy_and_no_token(start_relay: RelayFactory) -> None:
    async with (
        start_relay(driven=True, RELAY_API_TOKENS=DEFAULT_TOKEN) as r,
        httpx.AsyncClient(base_url=r.base_url, timeout=10) as anonymous,
    ):
        page = await anonymous.get("/ui/")
        assert (await anonymous.get("/jobs")).status_code == 401  # the API needs the token…
        assert page.status_code == 200  # …the console's files do not
        assert page.headers["content-type"].startswith("text/html")
        csp = {d.split()[0]: d.split()[1:] for d in page.headers["content-security-policy"].split("; ")}
        assert csp["default-src"] == ["'self'"]
        assert csp["script-src"] == ["'self'"]
        assert csp["connect-src"] == ["'self'"]
        assert csp["img-src"] == ["'self'", "data:"]
        assert csp["frame-ancestors"] == ["'none'"]
        assert csp["base-uri"] == ["'none'"]
        assert csp["form-action"] == ["'self'"]
        assert not any("unsafe" in v for values in csp.values() for v in values)
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"

        script = await anonymous.get("/ui/js/main.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["x-frame-options"] == "DENY"
        assert (await anonymous.get("/ui/style.css")).headers["content-type"].startswith("text/css")
        redirect = await anonymous.get("/ui")
        assert redirect.status_code == 308 and redirect.headers["location"] == "ui/"
        for missing in ["/ui/nothing.js", "/ui/../app/main.py", "/ui/%2e%2e/app/main.py", "/ui/js"]:
            assert (await anonymous.get(missing)).status_code == 404, missing


def test_the_console_writes_no_markup_and_has_no_inline_code() -> None:
    """What the CSP forbids is not written in the first place, and nothing builds HTML from text."""
    scripts = sorted(CONSOLE.rglob("*.js"))
    assert len(scripts) >= 5
    for path in scripts:
        text = path.read_text(encoding="utf-8")
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function("]:
            assert sink not in text, f"{path.name} uses {sink}"
    for path in CONSOLE.rglob("*.html"):
        html = path.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", html), f"inline script in {path.name}"
        assert not re.search(r"\s(on\w+|style)\s*=", html), f"inline handler or style in {path.name}"
        assert not re.search(r"(src|href)=\"(https?:)?//", html), f"a resource from elsewhere in {path.name}"


# --- in the browser -------------------------------------------------------------------------------


async def test_login_with_a_token_and_a_tenant_sees_only_its_jobs(
    start_relay: RelayFactory, console: ConsoleFactory, expect: Any
) -> None:
    async with start_relay(driven=True, RELAY_ADMIN_TOKENS=ADMIN, RELAY_API_TOKENS=DEFAULT_TOKEN) as r:
        acme = await make_tenant(r, "acme")
        await track(r, acme["token"], "acme-1")
        await track(r, acme["token"], "acme-2")
        await track(r, DEFAULT_TOKEN, "default-1")

        async with console(r) as c:
            await c.open("#/jobs")
            await expect(c.page.locator("#login")).to_be_visible()
            await expect(c.page.locator("#app")).to_be_hidden()
            await c.screenshot("login")
            await c.page.fill("#token", "not-a-token")
            await c.page.click("#login button[type=submit]")
            await expect(c.page.locator("#login .error")).to_have_text("This token was refused.")

            await c.page.fill("#token", acme["token"])
            await c.page.click("#login button[type=submit]")
            await expect(c.page.locator("header .who")).to_have_text("tenant acme")
            rows = c.page.locator("table.jobs tbody tr")
            await expect(rows).to_have_count(2)
            assert sorted(await c.page.locator("table.jobs td.id").all_text_contents()) == [
                "acme-1",
                "acme-2",
            ]
            assert await c.page.locator("#tenant-filter").count() == 0
            stored = await c.page.evaluate("sessionStorage.getItem('akool-relay.token')")
            assert stored == acme["token"]
            assert await c.page.evaluate("document.cookie") == ""
            # Once per browser session: a reload keeps the token, and asks for nothing.
            await c.page.reload()
            await expect(c.page.locator("header .who")).to_have_text("tenant acme")
            await expect(c.page.locator("#login")).to_be_hidden()
            await expect(rows).to_have_count(2)

            await c.page.click("#sign-out")
            await expect(c.page.locator("#login")).to_be_visible()
            assert await c.page.evaluate("sessionStorage.getItem('akool-relay.token')") is None

            # An operator sees every tenant's jobs, with a tenant filter.
            await log_in(c, expect, ADMIN)
            await expect(c.page.locator("header .who")).to_have_text("operator")
            await expect(rows).to_have_count(3)
            options = await c.page.locator("#tenant-filter option").all_text_contents()
            assert sorted(options) == ["acme", "all tenants", "default"]
            await c.page.select_option("#tenant-filter", "acme")
            await expect(rows).to_have_count(2)
            tenants = await c.page.locator("table.jobs tbody td:nth-child(2)").all_text_contents()
            assert tenants == ["acme", "acme"]
            await c.screenshot("jobs")

            # A token revoked meanwhile: the next call's 401 brings the login back.
            await c.page.click("#sign-out")
            await log_in(c, expect, acme["token"])
            gone = await r.client.delete(f"/tenants/{acme['id']}/tokens/{acme['token_id']}", headers=AS_ADMIN)
            assert gone.status_code == 204
            await c.go("#/jobs?q=acme")
            await expect(c.page.locator("#login")).to_be_visible()
            await expect(c.page.locator("#login .error")).to_contain_text("refused")


async def spread_over_the_last_hour(r: RunningRelay, minutes_ago: dict[str, int]) -> None:
    """Move finished jobs back in time, with their transitions, events and attempts, so the charts
    have an hour of history: the relay's clock is the wall clock, and a test cannot wait an hour."""
    async with r.relay.db.write() as session:
        for vid, minutes in minutes_ago.items():
            shift = timedelta(minutes=minutes)
            job = (await session.scalars(sa.select(Job).where(col(Job.video_model_id) == vid))).one()
            job.created_at -= shift
            job.updated_at -= shift
            assert job.finished_at is not None, vid
            job.finished_at -= shift
            for t in await session.scalars(sa.select(Transition).where(col(Transition.job_id) == job.id)):
                t.at -= shift
            for e in await session.scalars(sa.select(Event).where(col(Event.job_id) == job.id)):
                e.created_at -= shift
                if e.delivered_at is not None:
                    e.delivered_at -= shift
                for a in await session.scalars(sa.select(Attempt).where(col(Attempt.event_id) == e.id)):
                    a.at -= shift


async def test_the_overview_is_live_and_draws_one_mark_per_minute_with_data(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
    console: ConsoleFactory,
    expect: Any,
) -> None:
    rec, hook = receiver
    # An open API (no token anywhere): the console asks for none.
    async with start_relay(driven=True, RELAY_API_TOKENS=None, **DUE_AT_ONCE) as r:
        history = {f"done-{i}": m for i, m in enumerate([52, 47, 47, 40, 33, 33, 33, 25, 18, 12, 6, 2])}
        history |= {"fail-1": 40, "fail-2": 18}
        for vid in history:
            await register(r, vid, hook)
        await finish(r, sim_clock)
        await spread_over_the_last_hour(r, history)
        await register(r, "unknown-1", hook)  # never exists at Akool: stays pending
        await register(r, "working-1", hook)
        await poll(r)
        sim_clock.advance(0.35)  # queueing 0.2 s, then processing
        await poll(r)
        assert (await detail(r, "working-1"))["status"] == "processing"

        stats = (await r.client.get("/stats", params={"minutes": 60})).json()
        finished_minutes = {b["at"] for b in stats["buckets"] if sum(b["finished"].values())}
        latency_minutes = {b["at"] for b in stats["buckets"] if b["latency_p50_ms"] is not None}
        # 9 minutes, or 10 if the finishing poll straddled a minute's end
        assert len(finished_minutes) >= 9 and len(latency_minutes) >= 9, stats

        async with console(r) as c:
            await c.open()
            page = c.page
            await expect(page.locator("header .who")).to_contain_text("open API")
            await expect(page.locator("#login")).to_be_hidden()
            finished_marks = page.locator("svg.finished g.mark")
            latency_marks = page.locator("svg.latency g.mark")
            await expect(finished_marks).to_have_count(len(finished_minutes))
            await expect(latency_marks).to_have_count(len(latency_minutes))
            drawn = await finished_marks.evaluate_all("ms => ms.map(m => m.dataset.bucket)")
            assert set(drawn) == finished_minutes
            drawn = await latency_marks.evaluate_all("ms => ms.map(m => m.dataset.bucket)")
            assert set(drawn) == latency_minutes
            totals = await finished_marks.evaluate_all("ms => ms.map(m => Number(m.dataset.total))")
            assert sum(totals) == len(history)

            completed = page.locator("[data-jobs=completed]")
            await expect(completed).to_have_text("12")
            await expect(page.locator("[data-jobs=failed]")).to_have_text("2")
            await expect(page.locator("[data-jobs=pending]")).to_have_text("1")
            await expect(page.locator("[data-jobs=processing]")).to_have_text("1")
            await expect(page.locator("[data-deliveries=delivered]")).to_have_text("14")
            await expect(page.locator("[data-budget]")).to_contain_text("req/s")
            await c.screenshot("overview")

            # A job finishes while the page is open: the summary follows without a reload.
            await page.evaluate("window.sameDocument = true")
            sim_clock.advance(PAST_THE_END)
            await poll(r)
            await deliver(r)
            assert (await detail(r, "working-1"))["status"] == "completed"
            await expect(completed).to_have_text("13")
            await expect(page.locator("[data-jobs=processing]")).to_have_text("0")
            await expect(page.locator("[data-deliveries=delivered]")).to_have_text("15")
            assert await page.evaluate("window.sameDocument === true")
            assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert len(rec.accepted) == 15


async def test_find_a_job_by_id_see_its_attempts_and_redeliver_it(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    console: ConsoleFactory,
    expect: Any,
) -> None:
    # The receiver refuses each callback's first attempt: every delivery has two attempts.
    rec = Receiver(behaviour=Behaviour(fail_first=1, fail_status=503, body=b"thanks, got it"))

    fast_retry = {**DUE_AT_ONCE, "RELAY_RETRY_SCHEDULE": "0.001,0.001"}
    async with (
        serve_in_background(rec.app) as receiver_url,
        start_relay(driven=True, RELAY_API_TOKENS=DEFAULT_TOKEN, **fast_retry) as r,
    ):
        hook = rec.url(receiver_url)
        for vid in ["find-me-1", "finder-2", "other-3"]:
            await register(r, vid, hook, metadata={"order": vid})
        await finish(r, sim_clock)
        job = await detail(r, "find-me-1")
        [delivery] = job["deliveries"]
        assert [a["status_code"] for a in delivery["attempts"]] == [503, 200]

        async with console(r) as c:
            page = c.page
            await c.open("#/jobs")
            await log_in(c, expect, DEFAULT_TOKEN)
            rows = page.locator("table.jobs tbody tr")
            ids = page.locator("table.jobs td.id")
            await expect(rows).to_have_count(3)
            # Cursor paging, newest first: two a page, then "next page" brings the third.
            await c.go("#/jobs?limit=2")
            await expect(rows).to_have_count(2)
            assert await ids.all_text_contents() == ["other-3", "finder-2"]
            await page.click("text=next page »")
            await expect(rows).to_have_count(1)
            assert await ids.all_text_contents() == ["find-me-1"]
            assert "cursor=" in page.url
            await page.click("text=« first page")
            await expect(rows).to_have_count(2)
            # A time range: nothing was registered after 2099 began.
            await c.go("#/jobs")
            await expect(rows).to_have_count(3)
            await page.fill("input[name=since]", "2099-01-01T00:00")
            await page.click("form.filters button[type=submit]")
            await expect(page.locator(".empty-note")).to_have_text("No job matches these filters.")
            assert "since=2099-01-01T00%3A00%3A00.000Z" in page.url
            await page.fill("input[name=since]", "")
            # Search by id: a prefix finds the one job.
            await page.fill("input[name=q]", "find-me")
            await page.click("form.filters button[type=submit]")
            await expect(page.locator("table.jobs tbody tr")).to_have_count(1)
            await page.click("table.jobs td.id a")

            await expect(page.locator("main h1")).to_have_text("Job find-me-1")
            steps = page.locator("ol.timeline li")
            await expect(steps).to_have_count(len(job["transitions"]))
            vias = await page.locator("ol.timeline [data-via]").all_text_contents()
            assert vias == [f"via {t['via']}" for t in job["transitions"]]
            attempts = page.locator(
                f"section.delivery[data-webhook-id='{delivery['webhook_id']}'] tr.attempt"
            )
            await expect(attempts).to_have_count(2)
            await expect(attempts.nth(0).locator(".http")).to_have_text("503")
            await expect(attempts.nth(1).locator(".http")).to_have_text("200")
            await expect(attempts.nth(1).locator("pre.excerpt")).to_have_text("thanks, got it")
            await expect(page.locator("dl.facts")).to_contain_text('"order": "find-me-1"')
            await c.screenshot("job")

            before = len(rec.attempts)
            await page.click("text=Redeliver latest event")
            await expect(page.locator(".notice")).to_contain_text("queued again")
            assert await deliver(r) == 1
            assert len(rec.attempts) == before + 1
            assert rec.attempts[-1].webhook_id == delivery["webhook_id"]
            await expect(attempts).to_have_count(3)  # the page refreshes by itself
            await expect(attempts.nth(2).locator(".http")).to_have_text("200")


async def test_dead_deliveries_are_sent_again_only_after_the_count_is_shown(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    console: ConsoleFactory,
    expect: Any,
) -> None:
    answers = {"down": 500, "up": 200}
    async with (
        scripted(lambda path, _type: (answers[path], {})) as (rec, base),
        start_relay(
            driven=True,
            RELAY_ADMIN_TOKENS=ADMIN,
            RELAY_API_TOKENS=DEFAULT_TOKEN,
            RELAY_RETRY_SCHEDULE="0.001",
            **DUE_AT_ONCE,
        ) as r,
    ):
        for vid in ["dead-1", "dead-2", "dead-3"]:
            await register(r, vid, f"{base}/down")
        await register(r, "alive-1", f"{base}/up")
        await finish(r, sim_clock)
        dead = (await r.client.get("/deliveries", params={"state": "dead"}, headers=AS_ADMIN)).json()
        dead_ids = {d["webhook_id"] for d in dead["items"]}
        assert len(dead_ids) == 3

        async with console(r) as c:
            page = c.page
            await c.open("#/deliveries?state=dead")
            await log_in(c, expect, ADMIN)
            rows = page.locator("table.deliveries tbody tr")
            await expect(rows).to_have_count(3)
            shown = await rows.evaluate_all("rs => rs.map(r => r.dataset.webhookId)")
            assert set(shown) == dead_ids

            hits = len(rec.hits)
            await page.click("[data-action=dry-run]")
            await expect(page.locator(".count-note")).to_have_text("3 deliveries will be sent again.")
            await c.screenshot("deliveries")
            # The count is a dry run: nothing was queued, nothing sent.
            assert await deliver(r) == 0
            assert len(rec.hits) == hits
            still = (await r.client.get("/deliveries", params={"state": "dead"}, headers=AS_ADMIN)).json()
            assert len(still["items"]) == 3

            answers["down"] = 200  # the receiver is back
            await page.click("[data-action=confirm]")
            await expect(page.locator(".bulk .notice")).to_contain_text("3 deliveries are queued again")
            await expect(page.locator(".empty-note")).to_have_text("No dead delivery matches these filters.")
            assert await drain(r) == 3
            again = [h for h in rec.hits[hits:] if h.path == "down"]
            assert {h.webhook_id for h in again} == dead_ids
            assert all(h.status == 200 for h in again)


async def test_hostile_metadata_stays_text_everywhere(
    start_relay: RelayFactory,
    stepped_simulator: tuple[Simulator, str],
    sim_clock: ManualClock,
    receiver: tuple[Receiver, str],
    console: ConsoleFactory,
    expect: Any,
) -> None:
    _, hook = receiver
    async with start_relay(driven=True, RELAY_API_TOKENS=None, **DUE_AT_ONCE) as r:
        await register(r, "xss-1", hook, metadata={"x": HOSTILE, "y": "javascript:alert(2)"})
        await register(r, "fail-xss-2", f"{hook}?q=<script>alert(3)</script>", metadata={"x": HOSTILE})
        await finish(r, sim_clock)
        assert (await detail(r, "fail-xss-2"))["error_reason"]

        async with console(r) as c:
            page = c.page
            await c.open("#/jobs")
            await expect(page.locator("table.jobs tbody tr")).to_have_count(2)
            for vid in ["xss-1", "fail-xss-2"]:
                await c.go(f"#/job/{vid}")
                await expect(page.locator("main h1")).to_have_text(f"Job {vid}")
                await expect(page.locator("pre.json")).to_contain_text(HOSTILE)
                await expect(page.locator("ol.timeline li").first).to_be_visible()
            await expect(page.locator("dl.facts")).to_contain_text("<script>alert(3)</script>")
            await c.go("#/job/xss-1")
            await expect(page.locator("pre.json")).to_contain_text("javascript:alert(2)")
            await c.screenshot("job-hostile")
            await c.go("#/deliveries?state=delivered")
            await expect(page.locator("table.deliveries tbody tr")).to_have_count(2)
            await c.go("#/")
            await expect(page.locator("[data-jobs=completed]")).to_have_text("1")

            assert await page.locator("img").count() == 0
            hrefs = await page.evaluate(
                """[...document.querySelectorAll('[href]')].map(e =>
                    [e.tagName, new URL(e.getAttribute('href'), location.href).protocol])"""
            )
            assert ["LINK", "data:"] in hrefs  # the empty favicon: no request for /favicon.ico
            assert not [h for h in hrefs if h[1] == "javascript:"], hrefs
            assert not [h for h in hrefs if h[0] == "A" and h[1] not in ("http:", "https:")], hrefs
            # The one place an outside URL becomes a link checks its scheme first.
            kinds = await page.evaluate(
                """async () => {
                    const { link } = await import('/ui/js/dom.js');
                    return ['javascript:alert(1)', 'JaVaScRiPt:alert(1)', 'data:text/html,x', '/relative',
                            'https://example.com/v.mp4']
                        .map(u => { const e = link(u); return [e.tagName, e.getAttribute('href')]; });
                }"""
            )
            assert kinds == [
                ["SPAN", None],
                ["SPAN", None],
                ["SPAN", None],
                ["SPAN", None],
                ["A", "https://example.com/v.mp4"],
            ]
