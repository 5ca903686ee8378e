// Overview: the summary of GET /jobs and the last hour of GET /stats, refreshed every few seconds.

import { api } from "../api.js";
import { FINISHED, finishedChart, latencyChart, legend } from "../charts.js";
import { badge, clear, duration, every, h, ms, relative, route, when } from "../dom.js";

export const REFRESH_MS = 3000;
const JOB_STATUSES = ["pending", "queueing", "processing", "completed", "failed", "expired", "cancelled"];
const DELIVERY_STATES = ["pending", "retrying", "delivered", "dead"];

export const title = "Overview";

function countList(kind, names, counts, href) {
  return h(
    "ul",
    { class: "counts" },
    names.map((name) =>
      h(
        "li",
        {},
        route(href(name), badge(name, kind === "jobs" ? "status" : "state")),
        h("span", { class: "count", data: { [kind]: name } }, String(counts?.[name] ?? 0)),
      ),
    ),
  );
}

function card(label, ...children) {
  return h("section", { class: "card" }, h("h2", {}, label), ...children);
}

function upstreamCard(up) {
  const budget = up?.budget;
  const rows = [
    ["state", badge(up?.state ?? "unknown", "upstream")],
    ["last success", up?.last_success_at ? relative(up.last_success_at) : "never"],
    ["errors in a row", String(up?.consecutive_errors ?? 0)],
  ];
  const body = [h("dl", { class: "facts compact" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))];
  if (up?.reason) body.push(h("p", { class: "reason" }, up.reason));
  if (budget) {
    const spent = budget.spent_per_second ?? 0;
    const rate = budget.rate ?? 0;
    body.push(
      h(
        "div",
        { class: "budget" },
        h("div", { class: "budget-label" }, "request budget", h("span", { data: { budget: "" } }, `${spent.toFixed(1)} / ${rate.toFixed(1)} req/s (${rate ? Math.round((100 * spent) / rate) : 0} %)`)),
        h("meter", { min: 0, max: rate || 1, value: Math.min(spent, rate || 1), low: (rate || 1) * 0.7, high: (rate || 1) * 0.9, optimum: 0 }),
      ),
    );
  }
  return card("Akool", ...body);
}

function summaryCards(summary) {
  const jobs = summary.jobs || {};
  const unfinished = ["pending", "queueing", "processing"].reduce((n, k) => n + (jobs[k] || 0), 0);
  const oldest = summary.oldest_unfinished_age_seconds;
  return [
    card("Jobs", countList("jobs", JOB_STATUSES, jobs, (s) => `/jobs?status=${s}`)),
    card("Deliveries", countList("deliveries", DELIVERY_STATES, summary.deliveries, (s) => `/deliveries?state=${s}`)),
    card(
      "Oldest unfinished",
      h("p", { class: "big", data: { oldest: oldest ?? "" } }, oldest === null || oldest === undefined ? "none" : duration(oldest)),
      h("p", { class: "muted" }, `${unfinished} job${unfinished === 1 ? "" : "s"} not finished yet`),
    ),
    upstreamCard(summary.upstream),
  ];
}

function chartPanels(stats) {
  const buckets = stats.buckets || [];
  const sum = (key) => buckets.reduce((n, b) => n + (b[key] || 0), 0);
  const finished = buckets.reduce((n, b) => n + FINISHED.reduce((m, k) => m + (b.finished?.[k] || 0), 0), 0);
  return [
    h(
      "section",
      { class: "card chart-card" },
      h("h2", {}, `Jobs finished per minute`, h("span", { class: "muted" }, ` · ${finished} in the last ${stats.minutes} min`)),
      finishedChart(buckets),
      legend(FINISHED.map((k) => [`seg-${k}`, k])),
    ),
    h(
      "section",
      { class: "card chart-card" },
      h(
        "h2",
        {},
        "Callback latency",
        h("span", { class: "muted" }, ` · ${sum("delivered")} delivered, ${sum("attempts_failed")} attempts failed`),
      ),
      latencyChart(buckets, ms),
      legend([
        ["dot-p50", "p50"],
        ["dot-p99", "p99"],
      ]),
    ),
  ];
}

export function mount(root, ctx) {
  const updated = h("span", { class: "muted updated" });
  const error = h("p", { class: "error", hidden: true });
  const cards = h("div", { class: "cards" });
  const charts = h("div", { class: "charts" });
  root.append(h("div", { class: "view-head" }, h("h1", {}, "Overview"), updated), error, cards, charts);

  let alive = true;
  let statsLoaded = false;

  async function refresh() {
    const scope = ctx.scope();
    const [page, stats] = await Promise.allSettled([
      api("/jobs", { params: { ...scope, limit: 1 } }),
      api("/stats", { params: { ...scope, minutes: 60 } }),
    ]);
    if (!alive) return;
    for (const result of [page, stats]) if (result.status === "rejected") ctx.failed(result.reason);
    const problems = [];
    if (page.status === "fulfilled") clear(cards, summaryCards(page.value.summary));
    else problems.push(`summary: ${page.reason.message}`);
    if (stats.status === "fulfilled") {
      clear(charts, chartPanels(stats.value));
      statsLoaded = true;
    } else {
      problems.push(`charts: ${stats.reason.message}`);
      if (!statsLoaded) clear(charts);
    }
    error.hidden = !problems.length;
    error.textContent = problems.join(" · ");
    clear(updated, "updated ", when(new Date().toISOString()));
  }

  const stop = every(REFRESH_MS, refresh, () => alive);
  return () => {
    alive = false;
    stop();
  };
}
