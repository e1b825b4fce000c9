/**
 * Offered, passed and rejected traffic over time for the busiest sources, drawn with
 * vega-lite (one panel per source, the rest folded into "others") and written as SVG and,
 * next to it, PNG.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { isRejection, type Replay } from "./model";
import type { Traffic } from "./traffic";

/** The lines of each panel, in the order of the per-bin counts. */
const SERIES = ["offered", "passed", "rejected"] as const;

export interface ChartRow {
  source: string;
  /** Start of the time bin, in `unit`s since the first row. */
  time: number;
  series: (typeof SERIES)[number];
  count: number;
}

/** Bin widths the time axis may use, seconds. */
const BIN_STEPS = [0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400];

/** Per-bin counts for the `top` busiest sources and "others". */
export function chartData(
  traffic: Traffic,
  result: Replay,
  top: number,
): { rows: ChartRow[]; binSeconds: number; unit: "s" | "min" | "h" } {
  const n = traffic.length;
  if (n === 0) return { rows: [], binSeconds: 1, unit: "s" };
  const from = traffic.t[0];
  const span = traffic.t[n - 1] - from;
  const binSeconds =
    BIN_STEPS.find((step) => span / step <= 150) ?? BIN_STEPS[BIN_STEPS.length - 1];
  const bins = Math.floor(span / binSeconds) + 1;
  const unit = span >= 3 * 3600 ? "h" : span >= 180 ? "min" : "s";
  const unitSeconds = { s: 1, min: 60, h: 3600 }[unit];

  const perSource = new Int32Array(result.sources.length);
  for (let i = 0; i < n; i++) perSource[result.source[i]]++;
  const busiest = Array.from(perSource.keys())
    .sort((a, b) => perSource[b] - perSource[a] || a - b)
    .slice(0, top);
  const panels = busiest.map((s) =>
    result.sources[s] === "" ? '"" (shared bucket)' : result.sources[s],
  );
  const hasOthers = result.sources.length > busiest.length;
  if (hasOthers) panels.push(`others (${result.sources.length - busiest.length})`);
  const panelOf = new Int32Array(result.sources.length).fill(busiest.length);
  busiest.forEach((s, p) => (panelOf[s] = p));

  // counts[(panel * bins + bin) * 3 + series]
  const counts = new Int32Array(panels.length * bins * 3);
  for (let i = 0; i < n; i++) {
    const cell =
      (panelOf[result.source[i]] * bins + Math.floor((traffic.t[i] - from) / binSeconds)) * 3;
    counts[cell]++;
    counts[cell + (isRejection(result.outcome[i]) ? 2 : 1)]++;
  }
  const rows: ChartRow[] = [];
  panels.forEach((source, p) => {
    for (let b = 0; b < bins; b++) {
      SERIES.forEach((series, k) =>
        rows.push({
          source,
          time: (b * binSeconds) / unitSeconds,
          series,
          count: counts[(p * bins + b) * 3 + k],
        }),
      );
    }
  });
  return { rows, binSeconds, unit };
}

/** The vega-lite specification of the chart. */
export function chartSpec(
  data: ReturnType<typeof chartData>,
  title: string,
): Record<string, unknown> {
  const panels = [...new Set(data.rows.map((r) => r.source))];
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: {
      text: title,
      subtitle: `requests per ${data.binSeconds}s, busiest sources first`,
      anchor: "start",
    },
    data: { values: data.rows },
    facet: {
      row: {
        field: "source",
        type: "nominal",
        sort: panels,
        header: { labelAngle: 0, labelAlign: "left", labelFontSize: 12, title: null },
      },
    },
    spec: {
      width: 720,
      height: 90,
      mark: { type: "line", interpolate: "step-after", strokeWidth: 1.5 },
      encoding: {
        x: {
          field: "time",
          type: "quantitative",
          title: `time since first request (${data.unit})`,
        },
        y: { field: "count", type: "quantitative", title: "requests" },
        color: {
          field: "series",
          type: "nominal",
          title: null,
          scale: { domain: SERIES, range: ["#9e9e9e", "#2e7d32", "#c62828"] },
          legend: {
            orient: "top",
            direction: "horizontal",
            symbolType: "stroke",
            symbolStrokeWidth: 2,
            labelFontSize: 12,
          },
        },
        strokeDash: {
          field: "series",
          type: "nominal",
          scale: {
            domain: SERIES,
            range: [
              [4, 2],
              [1, 0],
              [1, 0],
            ],
          },
        },
      },
    },
    resolve: { scale: { y: "independent" } },
    config: { font: "DejaVu Sans", background: "white", view: { stroke: "#dddddd" } },
  };
}

/** Renders the chart to `svgPath` and a PNG beside it; returns both paths. */
export async function writeChart(
  svgPath: string,
  data: ReturnType<typeof chartData>,
  title: string,
): Promise<{ svg: string; png: string }> {
  const vegaLite = await import("vega-lite");
  const vega = await import("vega");
  const { Resvg } = await import("@resvg/resvg-js");

  const compiled = vegaLite.compile(chartSpec(data, title) as never).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();

  const pngPath = svgPath.replace(/\.svg$/i, "") + ".png";
  const png = new Resvg(svg, {
    background: "white",
    fitTo: { mode: "zoom", value: 2 },
    font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" },
  })
    .render()
    .asPng();
  fs.mkdirSync(path.dirname(path.resolve(svgPath)), { recursive: true });
  fs.writeFileSync(svgPath, svg);
  fs.writeFileSync(pngPath, png);
  return { svg: svgPath, png: pngPath };
}
