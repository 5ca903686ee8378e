// Jobs: GET /jobs with a status filter, an id search (q: the id or its prefix), a registration time
// range and cursor paging. The filters live in the URL (#/jobs?status=…&q=…), so the browser's
// back button and a copied link both work.

import { api } from "../api.js";
import { age, badge, clear, h, isoToLocal, localToIso, pager, relative, route, time } from "../dom.js";

export const title = "Jobs";
const STATUSES = ["pending", "queueing", "processing", "completed", "failed", "expired", "cancelled"];
const PAGE = 50;

/** The console link of one job (with its tenant, for operators: an id may be tracked by several). */
export function jobHref(job) {
  const query = job.tenant ? `?tenant=${encodeURIComponent(job.tenant)}` : "";
  return `/job/${encodeURIComponent(job.video_model_id)}${query}`;
}

export function progressBar(progress) {
  if (progress === null || progress === undefined) return h("span", { class: "muted" }, "—");
  const value = Math.max(0, Math.min(100, progress));
  return h("span", { class: "progress" }, h("progress", { max: 100, value }), h("span", {}, `${value}%`));
}

function filters(query) {
  const chosen = new Set(query.getAll("status"));
  const q = h("input", { type: "search", name: "q", placeholder: "video_model_id or its prefix", value: query.get("q") || "", autocomplete: "off", spellcheck: "false" });
  const since = h("input", { type: "datetime-local", name: "since", value: isoToLocal(query.get("since")) });
  const until = h("input", { type: "datetime-local", name: "until", value: isoToLocal(query.get("until")) });
  const boxes = STATUSES.map((s) => {
    const box = h("input", { type: "checkbox", name: "status", value: s });
    box.checked = chosen.has(s);
    return h("label", { class: "chip" }, box, s);
  });
  const form = h(
    "form",
    { class: "filters", role: "search" },
    h("div", { class: "chips" }, boxes),
    h("div", { class: "fields" }, h("label", {}, "id ", q), h("label", {}, "registered from ", since), h("label", {}, "to ", until),
      h("button", { type: "submit", class: "primary" }, "Apply"), route("/jobs", "clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const box of form.querySelectorAll("input[name=status]")) if (box.checked) next.append("status", box.value);
    if (q.value.trim()) next.set("q", q.value.trim());
    if (localToIso(since.value)) next.set("since", localToIso(since.value));
    if (localToIso(until.value)) next.set("until", localToIso(until.value));
    location.hash = `#/jobs${next.size ? `?${next}` : ""}`;
  });
  return form;
}

function table(items, operator) {
  const head = ["video_model_id", ...(operator ? ["tenant"] : []), "status", "progress", "expected finish", "delivery", "age"];
  return h(
    "table",
    { class: "jobs" },
    h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))),
    h(
      "tbody",
      {},
      items.map((job) =>
        h(
          "tr",
          { data: { job: job.video_model_id } },
          h("td", { class: "id" }, route(jobHref(job), job.video_model_id)),
          operator ? h("td", {}, job.tenant ?? "") : null,
          h("td", {}, badge(job.status)),
          h("td", {}, progressBar(job.progress)),
          h("td", { title: time(job.expected_finish_at) }, job.expected_finish_at ? relative(job.expected_finish_at) : "—"),
          h("td", {}, badge(job.delivery, "delivery")),
          h("td", { title: `registered ${time(job.created_at)}` }, age(job.created_at)),
        ),
      ),
    ),
  );
}

export function mount(root, ctx, query) {
  const result = h("div", { class: "result" }, h("p", { class: "muted" }, "loading…"));
  root.append(h("div", { class: "view-head" }, h("h1", {}, "Jobs")), filters(query), result);
  let alive = true;

  (async () => {
    const params = {
      ...ctx.scope(),
      status: query.getAll("status"),
      q: query.get("q"),
      since: query.get("since"),
      until: query.get("until"),
      cursor: query.get("cursor"),
      limit: query.get("limit") || PAGE,
    };
    let page;
    try {
      page = await api("/jobs", { params });
    } catch (err) {
      if (alive) clear(result, h("p", { class: "error" }, err.message));
      ctx.failed(err);
      return;
    }
    if (!alive) return;
    const links = pager("/jobs", query, page.next_cursor);
    const operator = page.items.some((j) => j.tenant !== undefined);
    clear(
      result,
      page.items.length
        ? table(page.items, operator)
        : h("p", { class: "empty-note" }, "No job matches these filters."),
      h("div", { class: "table-foot" }, h("span", { class: "muted" }, `${page.items.length} shown, newest first`), links),
    );
  })();
  return () => {
    alive = false;
  };
}
