// One job: what Akool and the relay know, its transitions as a timeline, and every delivery with
// its attempts; a button sends the latest event again. Refreshed every few seconds.

import { ApiError, api } from "../api.js";
import { badge, clear, every, h, link, ms, relative, route, time, when } from "../dom.js";
import { progressBar } from "./jobs.js";
import { REFRESH_MS } from "./overview.js";

export const title = "Job";

function facts(job) {
  const rows = [
    ["status", [badge(job.status), " Akool video_status ", String(job.video_status ?? "—")]],
    ["progress", progressBar(job.progress)],
    ["expected finish", job.expected_finish_at ? [when(job.expected_finish_at), h("span", { class: "muted" }, ` (${relative(job.expected_finish_at)})`)] : "—"],
    ["registered", [when(job.created_at), h("span", { class: "muted" }, ` (${relative(job.created_at)})`)]],
    ["updated", when(job.updated_at)],
    ["finished", when(job.finished_at)],
    ["polls", `${job.poll_count}${job.last_polled_at ? `, last ${relative(job.last_polled_at)}` : ""}${job.next_poll_at ? `, next ${relative(job.next_poll_at)}` : ""}`],
    ["Akool pushes", `${job.push_count ?? 0}${job.last_pushed_at ? `, last ${relative(job.last_pushed_at)}` : ""}`],
    ["callback URL", h("span", { class: "url" }, job.callback_url)],
    ["events", (job.events || []).join(", ")],
  ];
  if (job.tenant !== undefined) rows.splice(1, 0, ["tenant", job.tenant]);
  if (job.video_url) {
    rows.push(["video URL", [link(job.video_url), job.video_url_expires_at ? h("span", { class: "muted" }, ` (works until ${time(job.video_url_expires_at)})`) : null]]);
  }
  if (job.error_code !== null || job.error_reason) {
    rows.push(["error", h("span", { class: "error-text" }, [job.error_code ?? "", job.error_reason ?? ""].join(" ").trim())]);
  }
  rows.push(["metadata", h("pre", { class: "json" }, JSON.stringify(job.metadata ?? {}, null, 2))]);
  return h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function timeline(transitions) {
  if (!transitions.length) return h("p", { class: "muted" }, "No state change yet.");
  return h(
    "ol",
    { class: "timeline" },
    transitions.map((t) =>
      h(
        "li",
        { data: { to: t.to } },
        when(t.at),
        h(
          "span",
          { class: "change" },
          badge(t.from),
          " → ",
          badge(t.to),
          t.progress !== null && t.progress !== undefined ? h("span", { class: "muted" }, ` ${t.progress}%`) : null,
        ),
        h("span", { class: ["via", `via-${t.via}`], data: { via: t.via } }, `via ${t.via}`),
      ),
    ),
  );
}

function httpStatus(code) {
  if (code === null || code === undefined) return h("span", { class: "http http-none" }, "—");
  return h("span", { class: ["http", code >= 200 && code < 300 ? "http-ok" : "http-bad"] }, String(code));
}

function attemptsTable(attempts) {
  if (!attempts.length) return h("p", { class: "muted" }, "Not tried yet.");
  return h(
    "table",
    { class: "attempts" },
    h("thead", {}, h("tr", {}, ["#", "time", "HTTP", "error", "duration", "response"].map((c) => h("th", {}, c)))),
    h(
      "tbody",
      {},
      attempts.map((a, i) =>
        h(
          "tr",
          { class: "attempt", data: { status: a.status_code ?? "" } },
          h("td", {}, String(i + 1)),
          h("td", {}, when(a.at)),
          h("td", {}, httpStatus(a.status_code)),
          h("td", { class: "error-text" }, a.error ?? ""),
          h("td", {}, ms(a.duration_ms)),
          h("td", {}, a.response_excerpt ? h("pre", { class: "excerpt" }, a.response_excerpt) : h("span", { class: "muted" }, "—")),
        ),
      ),
    ),
  );
}

function deliveries(list) {
  if (!list.length) return [h("p", { class: "muted" }, "No event yet: nothing was due to be sent.")];
  return list.map((d) =>
    h(
      "section",
      { class: "delivery", data: { webhookId: d.webhook_id } },
      h(
        "div",
        { class: "delivery-head" },
        h("strong", {}, d.type),
        badge(d.state, "delivery"),
        h("code", { title: "webhook-id: the same on every attempt and redelivery" }, d.webhook_id),
        h(
          "span",
          { class: "muted" },
          `created ${time(d.created_at)}`,
          d.delivered_at ? ` · delivered ${time(d.delivered_at)}` : "",
          d.next_attempt_at ? ` · next attempt ${relative(d.next_attempt_at)}` : "",
        ),
      ),
      attemptsTable(d.attempts || []),
    ),
  );
}

export function mount(root, ctx, query, id) {
  const tenant = query.get("tenant") || "";
  const params = tenant ? { tenant } : {};
  const head = h("div", { class: "view-head" }, h("h1", {}, "Job ", h("code", {}, id)));
  const notice = h("p", { class: "notice", hidden: true, role: "status" });
  const body = h("div", { class: "job" }, h("p", { class: "muted" }, "loading…"));
  const button = h("button", { type: "button", class: "primary", disabled: true }, "Redeliver latest event");
  root.append(head, h("div", { class: "actions" }, button, route("/jobs", "« all jobs")), notice, body);

  let alive = true;
  let last = null;
  const path = `/jobs/${encodeURIComponent(id)}`;

  function say(text, cls = "notice") {
    notice.className = cls;
    notice.textContent = text;
    notice.hidden = false;
  }

  async function refresh() {
    let job;
    try {
      job = await api(path, { params });
    } catch (err) {
      if (!alive) return;
      ctx.failed(err);
      if (err instanceof ApiError && err.status === 422 && !tenant) {
        clear(body, h("p", {}, "Several tenants track this id. Whose job?"),
          h("ul", {}, ctx.tenants.map((t) => h("li", {}, route(`/job/${encodeURIComponent(id)}?tenant=${encodeURIComponent(t.name)}`, t.name)))));
      } else if (err instanceof ApiError && err.status === 404) {
        clear(body, h("p", { class: "error" }, "No job with this id is tracked here."));
      } else clear(body, h("p", { class: "error" }, err.message));
      return;
    }
    if (!alive) return;
    button.disabled = !(job.deliveries || []).length;
    // Drawn again only when something changed: a person selecting a webhook-id is not disturbed.
    const seen = JSON.stringify(job);
    if (seen === last) return;
    last = seen;
    clear(
      body,
      h("div", { class: "job-grid" },
        h("section", { class: "card" }, h("h2", {}, "Job"), facts(job)),
        h("section", { class: "card" }, h("h2", {}, "Transitions"), timeline(job.transitions || []))),
      h("section", { class: "card" }, h("h2", {}, "Deliveries ", badge(job.delivery, "delivery")), deliveries(job.deliveries || [])),
    );
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`${path}/redeliver`, { method: "POST", params });
      say("The latest event is queued again, with the same webhook-id.");
    } catch (err) {
      ctx.failed(err);
      say(err.message, "error");
    }
    await refresh();
  });

  const stop = every(REFRESH_MS, refresh, () => alive);
  return () => {
    alive = false;
    stop();
  };
}
