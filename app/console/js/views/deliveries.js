// Deliveries by state (GET /deliveries, dead ones first of all), with "redeliver all matching":
// a dry run of POST /deliveries/redeliver shows how many would be sent, and only a second click
// sends them, with the filter the count was made for.

import { api } from "../api.js";
import { badge, clear, h, isoToLocal, localToIso, pager, relative, route, time, when } from "../dom.js";
import { jobHref } from "./jobs.js";

export const title = "Deliveries";
const STATES = ["dead", "retrying", "pending", "delivered"];
const PAGE = 50;

function filters(query, state) {
  const select = h("select", { name: "state" }, STATES.map((s) => h("option", { value: s }, s)));
  select.value = state;
  const since = h("input", { type: "datetime-local", name: "since", value: isoToLocal(query.get("since")) });
  const until = h("input", { type: "datetime-local", name: "until", value: isoToLocal(query.get("until")) });
  const form = h(
    "form",
    { class: "filters", role: "search" },
    h("div", { class: "fields" }, h("label", {}, "state ", select), h("label", {}, "event from ", since), h("label", {}, "to ", until),
      h("button", { type: "submit", class: "primary" }, "Apply"), route("/deliveries", "clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams({ state: select.value });
    if (localToIso(since.value)) next.set("since", localToIso(since.value));
    if (localToIso(until.value)) next.set("until", localToIso(until.value));
    location.hash = `#/deliveries?${next}`;
  });
  return form;
}

function lastAttempt(a) {
  if (!a) return h("span", { class: "muted" }, "—");
  const code = a.status_code;
  return h(
    "span",
    { class: "last-attempt" },
    h("span", { class: ["http", code >= 200 && code < 300 ? "http-ok" : code ? "http-bad" : "http-none"] }, code ? String(code) : "—"),
    a.error ? h("span", { class: "error-text" }, ` ${a.error}`) : null,
    h("span", { class: "muted" }, ` ${relative(a.at)}`),
  );
}

function table(items, operator) {
  const head = ["event created", "job", ...(operator ? ["tenant"] : []), "type", "state", "attempts", "last attempt", "delivered / next"];
  return h(
    "table",
    { class: "deliveries" },
    h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
    h(
      "tbody",
      {},
      items.map((d) =>
        h(
          "tr",
          { data: { webhookId: d.webhook_id } },
          h("td", {}, when(d.created_at)),
          h("td", { class: "id" }, route(jobHref(d), d.video_model_id)),
          operator ? h("td", {}, d.tenant ?? "") : null,
          h("td", {}, d.type),
          h("td", {}, badge(d.state, "delivery")),
          h("td", {}, String(d.attempts ?? "")),
          h("td", {}, lastAttempt(d.last_attempt)),
          h("td", {}, d.delivered_at ? time(d.delivered_at) : d.next_attempt_at ? relative(d.next_attempt_at) : "—"),
        ),
      ),
    ),
  );
}

function bulk(ctx, query, reload) {
  const box = h("div", { class: "bulk" });
  const filter = { state: "dead", ...ctx.scope() };
  if (query.get("since")) filter.since = query.get("since");
  if (query.get("until")) filter.until = query.get("until");

  const start = h("button", { type: "button", class: "primary", data: { action: "dry-run" } }, "Redeliver all matching…");
  const idle = () => clear(box, start, h("span", { class: "muted" }, " every dead delivery this filter matches, not only this page"));

  start.addEventListener("click", async () => {
    start.disabled = true;
    let count;
    try {
      ({ count } = await api("/deliveries/redeliver", { method: "POST", body: { ...filter, dry_run: true } }));
    } catch (err) {
      ctx.failed(err);
      start.disabled = false;
      box.append(h("p", { class: "error" }, err.message));
      return;
    }
    if (!count) {
      clear(box, h("span", { class: "count-note", data: { count: 0 } }, "Nothing matches: no delivery would be sent."), " ", cancel("OK"));
      return;
    }
    const confirm = h("button", { type: "button", class: "danger", data: { action: "confirm" } }, `Send ${count} again`);
    confirm.addEventListener("click", async () => {
      confirm.disabled = true;
      try {
        const sent = await api("/deliveries/redeliver", { method: "POST", body: { ...filter, dry_run: false } });
        clear(box, h("span", { class: "notice", role: "status", data: { sent: sent.count } }, `${sent.count} ${sent.count === 1 ? "delivery is" : "deliveries are"} queued again, each with its original webhook-id.`));
      } catch (err) {
        ctx.failed(err);
        clear(box, h("p", { class: "error" }, err.message), cancel("Back"));
        return;
      }
      reload();
    });
    clear(
      box,
      h("span", { class: "count-note", data: { count } }, `${count} ${count === 1 ? "delivery" : "deliveries"} will be sent again.`),
      " ",
      confirm,
      " ",
      cancel("Cancel"),
    );
  });

  function cancel(label) {
    return h("button", { type: "button", onclick: idle }, label);
  }
  idle();
  return box;
}

export function mount(root, ctx, query) {
  const state = STATES.includes(query.get("state")) ? query.get("state") : "dead";
  const result = h("div", { class: "result" }, h("p", { class: "muted" }, "loading…"));
  root.append(
    h("div", { class: "view-head" }, h("h1", {}, state === "dead" ? "Dead deliveries" : `Deliveries: ${state}`)),
    filters(query, state),
  );
  let alive = true;

  async function load() {
    const params = { ...ctx.scope(), state, since: query.get("since"), until: query.get("until"), cursor: query.get("cursor"), limit: query.get("limit") || PAGE };
    let page;
    try {
      page = await api("/deliveries", { params });
    } catch (err) {
      if (alive) clear(result, h("p", { class: "error" }, err.message));
      ctx.failed(err);
      return;
    }
    if (!alive) return;
    const links = pager("/deliveries", query, page.next_cursor, { state });
    const operator = page.items.some((d) => d.tenant !== undefined);
    clear(
      result,
      page.items.length ? table(page.items, operator) : h("p", { class: "empty-note" }, `No ${state} delivery matches these filters.`),
      h("div", { class: "table-foot" }, h("span", { class: "muted" }, `${page.items.length} shown, newest first`), links),
    );
  }

  if (state === "dead") root.append(bulk(ctx, query, () => alive && load()));
  root.append(result);
  load();
  return () => {
    alive = false;
  };
}
