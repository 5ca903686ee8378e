// Building the page: every string becomes a text node, never markup. No part of the console parses
// HTML from a string (tests/browser/test_console.py checks the sources for those calls).

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function applyAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "data") for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "href" || key === "src" || key === "style" || key === "srcdoc") {
      throw new Error(`set ${key} through link() only`);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  return el;
}

/** h("td", {class: "x"}, "text", child…): an HTML element; strings become text nodes. */
export function h(tag, attrs, ...children) {
  const el = applyAttrs(document.createElement(tag), attrs);
  append(el, children);
  return el;
}

/** s("rect", {x: 1}): an SVG element; children as for h(). */
export function s(tag, attrs, ...children) {
  const el = applyAttrs(document.createElementNS(SVG_NS, tag), attrs);
  append(el, children);
  return el;
}

/** A link to a page of the console itself (a hash route). */
export function route(hash, ...children) {
  const a = h("a", {}, ...children);
  a.setAttribute("href", hash.startsWith("#") ? hash : `#${hash}`);
  return a;
}

/** The scheme of `value` when it is an absolute http(s) URL, else null. */
export function httpUrl(value) {
  if (typeof value !== "string") return null;
  let url;
  try {
    url = new URL(value);
  } catch {
    return null;
  }
  return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
}

/** An outside link for an http(s) URL (opening in a new tab, no referrer); anything else
 * (javascript:, data:, a relative path, not a string) is shown as plain text. */
export function link(value, text) {
  const href = httpUrl(value);
  const label = text ?? String(value ?? "");
  if (href === null) return h("span", { class: "url" }, label);
  const a = h("a", { class: "url", target: "_blank", rel: "noopener noreferrer" }, label);
  a.setAttribute("href", href);
  return a;
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// --- formatting -----------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");

/** An ISO time as "YYYY-MM-DD HH:MM:SS" in the browser's time zone; "—" for null. */
export function time(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A <time> element showing `time(iso)`, with the exact ISO value as its datetime. */
export function when(iso) {
  const el = h("time", {}, time(iso));
  if (iso) el.setAttribute("datetime", iso);
  return el;
}

/** Seconds as "45 s", "12 min 5 s", "3 h 20 min", "2 d 4 h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const sec = Math.max(0, Math.round(seconds));
  if (sec < 60) return `${sec} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
  if (sec < 86400) return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
  return `${Math.floor(sec / 86400)} d ${Math.floor((sec % 86400) / 3600)} h`;
}

/** How long ago an ISO time was, as duration(). */
export function age(iso) {
  if (!iso) return "—";
  return duration((Date.now() - new Date(iso).getTime()) / 1000);
}

/** How far an ISO time is from now: "in 3 min 2 s" or "5 s ago". */
export function relative(iso) {
  if (!iso) return "—";
  const delta = (new Date(iso).getTime() - Date.now()) / 1000;
  return delta >= 0 ? `in ${duration(delta)}` : `${duration(-delta)} ago`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

/** A value of a <input type="datetime-local"> (the browser's time zone) as ISO UTC; "" stays "". */
export function localToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** An ISO time as the value of a <input type="datetime-local">. */
export function isoToLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A status or state as a coloured badge (the colour comes from style.css, by class). */
export function badge(value, kind = "status") {
  return h("span", { class: ["badge", `${kind}-${value}`], data: { [kind]: value ?? "" } }, value ?? "—");
}

/** The paging links of a cursor-paged list at `path` (a route), for the page `query` shows:
 * "« first page" on a later page, "next page »" when `nextCursor` says there is one. `fixed`
 * parameters (the list's own, e.g. its state) are set on both. */
export function pager(path, query, nextCursor, fixed = {}) {
  const nav = h("div", { class: "pager" });
  const to = (cursor) => {
    const params = new URLSearchParams(query);
    for (const [key, value] of Object.entries(fixed)) params.set(key, value);
    if (cursor) params.set("cursor", cursor);
    else params.delete("cursor");
    return `${path}${params.size ? `?${params}` : ""}`;
  };
  if (query.get("cursor")) nav.append(route(to(null), "« first page"));
  if (nextCursor) nav.append(route(to(nextCursor), "next page »"));
  return nav;
}

/** Runs `refresh` now and again `ms` after each run ends, while `shown()` says the view is on
 * screen; returns what stops the next run. */
export function every(ms, refresh, shown) {
  let timer = null;
  (async function loop() {
    try {
      await refresh();
    } finally {
      if (shown()) timer = setTimeout(loop, ms);
    }
  })();
  return () => clearTimeout(timer);
}
