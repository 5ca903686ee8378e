// Two small SVG charts drawn from GET /stats (one bucket per minute, oldest first). Every bucket that
// has something to show gets exactly one mark, a <g class="mark" data-bucket="<its time>">, holding
// its shapes and a <title> (the tooltip); empty buckets draw nothing.

import { h, s } from "./dom.js";

export const FINISHED = ["completed", "failed", "expired", "cancelled"];

const W = 720;
const H = 200;
const M = { top: 12, right: 12, bottom: 26, left: 52 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

const pad = (n) => String(n).padStart(2, "0");
const clock = (iso) => {
  const d = new Date(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
};

/** A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least `max`. */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((m) => m * p).find((v) => v >= max);
}

/** The same for counts, whose middle tick must be a whole number too: an even bound, at least 2. */
function countMax(max) {
  if (!(max > 2)) return 2;
  const p = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 4, 6, 8, 10].map((m) => m * p).find((v) => v >= max && v % 2 === 0);
}

function frame(cls, label, buckets, yMax, yFormat) {
  const svg = s("svg", {
    class: ["chart", cls],
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": label,
  });
  for (const frac of [0, 0.5, 1]) {
    const y = M.top + PH * (1 - frac);
    svg.append(
      s("line", { class: frac === 0 ? "axis" : "grid", x1: M.left, x2: W - M.right, y1: y, y2: y }),
      s("text", { class: "tick", x: M.left - 6, y: y + 4, "text-anchor": "end" }, yFormat(yMax * frac)),
    );
  }
  const n = buckets.length;
  buckets.forEach((b, i) => {
    // A time label every 15 minutes, and at the last bucket.
    if (i === n - 1 || (new Date(b.at).getMinutes() % 15 === 0 && n - 1 - i > 6)) {
      const x = M.left + (PW * (i + 0.5)) / n;
      svg.append(s("text", { class: "tick", x, y: H - 8, "text-anchor": "middle" }, clock(b.at)));
    }
  });
  return svg;
}

function empty(svg, text) {
  svg.append(s("text", { class: "empty", x: M.left + PW / 2, y: M.top + PH / 2, "text-anchor": "middle" }, text));
}

/** Stacked bars: jobs finished per minute by status. */
export function finishedChart(buckets) {
  const totals = buckets.map((b) => FINISHED.reduce((sum, k) => sum + (b.finished?.[k] || 0), 0));
  const yMax = countMax(Math.max(0, ...totals));
  const svg = frame("finished", "jobs finished per minute, by status", buckets, yMax, (v) => String(Math.round(v)));
  const slot = PW / Math.max(1, buckets.length);
  const width = Math.max(1, slot * 0.72);
  buckets.forEach((b, i) => {
    if (!totals[i]) return;
    const x = M.left + slot * i + (slot - width) / 2;
    const mark = s("g", { class: "mark", data: { bucket: b.at, total: totals[i] } });
    let y = M.top + PH;
    const parts = [];
    for (const k of FINISHED) {
      const n = b.finished?.[k] || 0;
      if (!n) continue;
      const height = (PH * n) / yMax;
      y -= height;
      mark.append(s("rect", { class: `seg seg-${k}`, x, y, width, height }));
      parts.push(`${n} ${k}`);
    }
    mark.prepend(s("title", {}, `${clock(b.at)} · ${parts.join(", ")}`));
    svg.append(mark);
  });
  if (!totals.some(Boolean)) empty(svg, "no job finished in this period");
  return svg;
}

/** Callback latency (event created → delivered) per minute: p50 and p99, as lines with dots. */
export function latencyChart(buckets, format) {
  const known = buckets.filter((b) => b.latency_p50_ms !== null && b.latency_p50_ms !== undefined);
  const yMax = niceMax(Math.max(0, ...known.map((b) => Math.max(b.latency_p50_ms, b.latency_p99_ms ?? 0))));
  const svg = frame("latency", "callback latency per minute, p50 and p99", buckets, yMax, format);
  const n = Math.max(1, buckets.length);
  const x = (i) => M.left + (PW * (i + 0.5)) / n;
  const y = (v) => M.top + PH * (1 - v / yMax);
  const points = { p50: [], p99: [] };
  const marks = [];
  buckets.forEach((b, i) => {
    if (b.latency_p50_ms === null || b.latency_p50_ms === undefined) return;
    const p99 = b.latency_p99_ms ?? b.latency_p50_ms;
    points.p50.push(`${x(i)},${y(b.latency_p50_ms)}`);
    points.p99.push(`${x(i)},${y(p99)}`);
    marks.push(
      s(
        "g",
        { class: "mark", data: { bucket: b.at, p50: b.latency_p50_ms, p99 } },
        s("title", {}, `${clock(b.at)} · p50 ${format(b.latency_p50_ms)}, p99 ${format(p99)}`),
        s("line", { class: "whisker", x1: x(i), x2: x(i), y1: y(b.latency_p50_ms), y2: y(p99) }),
        s("circle", { class: "dot dot-p99", cx: x(i), cy: y(p99), r: 3.5 }),
        s("circle", { class: "dot dot-p50", cx: x(i), cy: y(b.latency_p50_ms), r: 3.5 }),
      ),
    );
  });
  for (const k of ["p99", "p50"]) {
    if (points[k].length > 1) svg.append(s("polyline", { class: `line line-${k}`, points: points[k].join(" ") }));
  }
  svg.append(...marks);
  if (!marks.length) empty(svg, "no callback delivered in this period");
  return svg;
}

/** A legend: a coloured swatch and a label per series. */
export function legend(entries) {
  return h(
    "ul",
    { class: "legend" },
    entries.map(([cls, label]) => h("li", {}, h("span", { class: ["swatch", cls] }), label)),
  );
}
