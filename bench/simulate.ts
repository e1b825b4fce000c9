/**
 * Replay throughput: requests per second for 10^4, 10^5 and 10^6 requests from 10^4
 * sources, on one edge and on two (buckets per instance, and shared as in Redis), next to a
 * bare loop doing only the unavoidable per-request bookkeeping (one Map lookup, one
 * arithmetic update). Run with `npx tsx bench/simulate.ts`; it measures and prints, it
 * asserts nothing.
 */
import { performance } from "node:perf_hooks";
import { ENTRY_POINTS } from "../components/names";
import { replay, type SimPolicy } from "../tools/simulate/model";
import { seededRandom } from "../tools/simulate/profiles";
import { summarize } from "../tools/simulate/report";
import { TrafficBuilder, type Traffic } from "../tools/simulate/traffic";

const SOURCES = 10_000;
const SIZES = [10_000, 100_000, 1_000_000];
const RUNS = 5;

const policy: SimPolicy = {
  http: {
    middleware: "bench",
    average: 30,
    periodSeconds: 60,
    burst: 20,
    sourceCriterion: { kind: "remoteAddr" },
  },
  smtp: {
    inFlight: 10,
    connectionSeconds: 2,
    windowSeconds: 60,
    connectionCount: 10,
    connectionRate: 50,
    authRate: 10,
    messageRate: 100,
    exempt: [],
  },
  trustedIPs: [],
};

/** `n` HTTP requests, 1000 a second, from SOURCES addresses picked at random. */
function traffic(n: number): Traffic {
  const random = seededRandom(n);
  const addresses = Array.from(
    { length: SOURCES },
    (_, i) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`,
  );
  const builder = new TrafficBuilder(n);
  for (let i = 0; i < n; i++) {
    const address = addresses[Math.floor(random() * SOURCES)];
    builder.add({
      t: i / 1000,
      remoteAddr: address,
      entryPoint: ENTRY_POINTS.websecure,
      router: ENTRY_POINTS.websecure,
    });
  }
  return builder.build();
}

/** The floor: per row, find the row's state with one Map lookup and update it once. */
function bareLoop(rows: Traffic): number {
  const slotOf = new Map<number, number>();
  const state = new Float64Array(rows.strings.length);
  for (let i = 0; i < rows.length; i++) {
    const key = rows.remoteAddr[i];
    let slot = slotOf.get(key);
    if (slot === undefined) slotOf.set(key, (slot = slotOf.size));
    state[slot] = state[slot] * 0.5 + rows.t[i];
  }
  return state[0];
}

/** Best of RUNS, in seconds. */
function best(run: () => unknown): number {
  let fastest = Infinity;
  for (let r = 0; r < RUNS; r++) {
    const start = performance.now();
    run();
    fastest = Math.min(fastest, (performance.now() - start) / 1000);
  }
  return fastest;
}

const perSecond = (n: number, seconds: number) => `${(n / seconds / 1e6).toFixed(2)}M/s`;

console.log(`Node ${process.version}, ${SOURCES} sources, best of ${RUNS} runs`);
const columns = [10, 18, 18, 18, 18, 12, 6];
const row = (cells: string[]) => console.log(cells.map((c, i) => c.padEnd(columns[i])).join(" "));
const timed = (n: number, seconds: number) =>
  `${perSecond(n, seconds)} (${(seconds * 1000).toFixed(0)}ms)`;
row([
  "requests",
  "replay",
  "replay+summary",
  "2 edges",
  "2 edges shared",
  "bare loop",
  "replay/bare",
]);
for (const n of SIZES) {
  const rows = traffic(n);
  const replayTime = best(() => replay(rows, policy));
  const fullTime = best(() => summarize(rows, replay(rows, policy), policy));
  const twoEdges = best(() => replay(rows, policy, { count: 2, shared: false, spread: "request" }));
  const twoShared = best(() => replay(rows, policy, { count: 2, shared: true, spread: "request" }));
  const bareTime = best(() => bareLoop(rows));
  row([
    String(n),
    timed(n, replayTime),
    timed(n, fullTime),
    timed(n, twoEdges),
    timed(n, twoShared),
    perSecond(n, bareTime),
    (replayTime / bareTime).toFixed(1),
  ]);
}
