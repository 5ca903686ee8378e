// The console's shell: who is calling (login), the header with the tenant filter, and hash routing
// between the views. Each view's mount(root, ctx, query, …) returns a function that stops it.

import { ApiError, Unauthorized, api, session } from "./api.js";
import { clear, h, route } from "./dom.js";
import * as deliveries from "./views/deliveries.js";
import * as job from "./views/job.js";
import * as jobs from "./views/jobs.js";
import * as overview from "./views/overview.js";

const app = document.getElementById("app");
const loginView = document.getElementById("login");

const ctx = {
  role: "open", // "tenant", "operator" (an admin token) or "open" (no token exists at all)
  tenantName: null,
  tenants: [],
  /** Query parameters that scope every call: an operator's tenant filter. */
  scope() {
    return this.role !== "tenant" && session.tenant ? { tenant: session.tenant } : {};
  },
  /** Every view hands its failures here: a refused token brings the login back. */
  failed(err) {
    if (err instanceof Unauthorized) showLogin("The relay refused the token. Sign in again.");
  },
};

let stop = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?", 2);
  return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(search) };
}

function render() {
  if (stop) stop();
  stop = null;
  const { parts, query } = parseHash();
  const root = document.getElementById("view");
  root.replaceChildren();
  let view = overview;
  let args = [];
  if (parts[0] === "jobs") view = jobs;
  else if (parts[0] === "job" && parts[1]) {
    view = job;
    args = [parts[1]];
  } else if (parts[0] === "deliveries") view = deliveries;
  else if (parts.length) {
    root.append(h("p", { class: "error" }, "There is no such page."), route("/", "Overview"));
    return;
  }
  root.dataset.view = view.title.toLowerCase();
  document.title = `${args[0] ? `${view.title} ${args[0]}` : view.title} · akool-relay`;
  for (const a of document.querySelectorAll("nav.main a")) {
    if (a.dataset.view === root.dataset.view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  stop = view.mount(root, ctx, query, ...args);
}

function header() {
  const nav = h(
    "nav",
    { class: "main" },
    [
      ["/", "Overview", "overview"],
      ["/jobs", "Jobs", "jobs"],
      ["/deliveries?state=dead", "Dead deliveries", "deliveries"],
    ].map(([href, label, view]) => {
      const a = route(href, label);
      a.dataset.view = view;
      return a;
    }),
  );
  const who = h("span", { class: "who", data: { role: ctx.role } });
  if (ctx.role === "tenant") who.append("tenant ", h("strong", {}, ctx.tenantName));
  else if (ctx.role === "operator") who.append(h("strong", {}, "operator"));
  else who.append(h("strong", {}, "open API"), " (no token configured)");

  const tools = h("div", { class: "tools" });
  if (ctx.role !== "tenant" && ctx.tenants.length) {
    const select = h(
      "select",
      { id: "tenant-filter", "aria-label": "tenant" },
      h("option", { value: "" }, "all tenants"),
      ctx.tenants.map((t) => h("option", { value: t.name }, t.name + (t.disabled ? " (disabled)" : ""))),
    );
    if (!ctx.tenants.some((t) => t.name === session.tenant)) session.tenant = "";
    select.value = session.tenant;
    select.addEventListener("change", () => {
      session.tenant = select.value;
      render();
    });
    tools.append(h("label", { class: "tenant-filter" }, "tenant ", select));
  }
  tools.append(who);
  if (session.token) {
    tools.append(h("button", { type: "button", id: "sign-out", onclick: () => showLogin() }, "Sign out"));
  }
  const brand = route("/", "akool-relay", h("span", {}, " console"));
  brand.classList.add("brand");
  return h("header", { class: "top" }, brand, nav, tools);
}

/** Who the token belongs to: a tenant (GET /tenant answers), else an operator; operators read the tenants. */
async function identify() {
  ctx.tenants = [];
  ctx.tenantName = null;
  if (!session.token) ctx.role = "open";
  else {
    try {
      ctx.tenantName = (await api("/tenant")).name;
      ctx.role = "tenant";
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
      ctx.role = "operator";
    }
  }
  if (ctx.role !== "tenant") {
    try {
      ctx.tenants = await api("/tenants");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    }
  }
}

async function showApp() {
  await identify();
  loginView.hidden = true;
  clear(app, header(), h("main", { id: "view" }));
  app.hidden = false;
  render();
}

function showLogin(message = "") {
  if (stop) stop();
  stop = null;
  session.token = null;
  session.tenant = "";
  app.hidden = true;
  app.replaceChildren();
  loginView.hidden = false;
  const error = loginView.querySelector(".error");
  error.textContent = message;
  error.hidden = !message;
  const input = loginView.querySelector("input[name=token]");
  input.value = "";
  input.focus();
}

async function login(event) {
  event.preventDefault();
  const input = loginView.querySelector("input[name=token]");
  const error = loginView.querySelector(".error");
  const token = input.value.trim();
  if (!token) return;
  try {
    await api("/jobs", { params: { limit: 1 }, token });
  } catch (err) {
    error.textContent = err instanceof Unauthorized ? "This token was refused." : err.message;
    error.hidden = false;
    return;
  }
  session.token = token;
  await showApp();
}

async function start() {
  loginView.querySelector("form").addEventListener("submit", login);
  window.addEventListener("hashchange", () => {
    if (!app.hidden) render();
  });
  try {
    await api("/jobs", { params: { limit: 1 } }); // with the session's token, or none: an open API answers
  } catch (err) {
    if (err instanceof Unauthorized) {
      showLogin(session.token ? "The relay refused the token. Sign in again." : "");
      return;
    }
    throw err;
  }
  await showApp();
}

start().catch((err) => {
  document.body.append(h("p", { class: "error fatal" }, `The console could not start: ${err.message}`));
});
