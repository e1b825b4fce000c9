/**
 * Traffic as the model replays it: one row per HTTP request or SMTP connection, held in
 * columns (typed arrays) with every string interned once, so a replay of millions of rows
 * allocates nothing per row and parses each distinct address once.
 */

export const AUTH_NONE = 0;
export const AUTH_OK = 1;
export const AUTH_FAIL = 2;

/** Where a row came from when it was generated, and whether it should get through. */
export interface TrafficProfile {
  /** The profile as given on the command line, e.g. "bruteforce:rate=5/s". */
  label: string;
  name: string;
  /** Legitimate traffic should pass; abusive traffic should be limited. */
  legitimate: boolean;
}

/** One request or connection, the form inputs and profiles produce. */
export interface TrafficEvent {
  /** Arrival time, seconds. */
  t: number;
  /** The connecting peer as Traefik sees it: an address, optionally with :port. */
  remoteAddr: string;
  /** X-Forwarded-For as the peer sent it. */
  xff?: string;
  /** Source address of the PROXY protocol header the peer sent (SMTP). */
  proxy?: string;
  entryPoint: string;
  /** Router name; HTTP buckets are kept per router. */
  router: string;
  auth?: "ok" | "fail";
  /** Index into Traffic.profiles. */
  profile?: number;
}

export interface Traffic {
  readonly length: number;
  readonly t: Float64Array;
  /** Indexes into `strings`; -1 = absent. */
  readonly remoteAddr: Int32Array;
  readonly xff: Int32Array;
  readonly proxy: Int32Array;
  readonly entryPoint: Int32Array;
  readonly router: Int32Array;
  readonly auth: Uint8Array;
  /** Index into `profiles`; -1 = none. */
  readonly profile: Int16Array;
  readonly strings: readonly string[];
  readonly profiles: readonly TrafficProfile[];
}

type Column = Float64Array | Int32Array | Uint8Array | Int16Array;

/** A copy of a typed array with room for `capacity` elements (the same type, zero-filled). */
export function widen<A extends Column>(column: A, capacity: number): A {
  const wider = new (column.constructor as new (n: number) => A)(capacity);
  wider.set(column);
  return wider;
}

/** Collects events in any order and hands them over sorted by time (stable). */
export class TrafficBuilder {
  private length = 0;
  private capacity: number;
  private t: Float64Array;
  private columns: {
    remoteAddr: Int32Array;
    xff: Int32Array;
    proxy: Int32Array;
    entryPoint: Int32Array;
    router: Int32Array;
  };
  private auth: Uint8Array;
  private profile: Int16Array;
  private readonly strings: string[] = [];
  private readonly index = new Map<string, number>();
  private sorted = true;
  readonly profiles: TrafficProfile[] = [];

  constructor(expected = 1024) {
    this.capacity = Math.max(16, expected);
    this.t = new Float64Array(this.capacity);
    this.columns = {
      remoteAddr: new Int32Array(this.capacity),
      xff: new Int32Array(this.capacity),
      proxy: new Int32Array(this.capacity),
      entryPoint: new Int32Array(this.capacity),
      router: new Int32Array(this.capacity),
    };
    this.auth = new Uint8Array(this.capacity);
    this.profile = new Int16Array(this.capacity);
  }

  /** The index of a string in the traffic's string table. */
  intern(text: string): number {
    let i = this.index.get(text);
    if (i === undefined) {
      i = this.strings.length;
      this.strings.push(text);
      this.index.set(text, i);
    }
    return i;
  }

  addProfile(profile: TrafficProfile): number {
    this.profiles.push(profile);
    return this.profiles.length - 1;
  }

  add(e: TrafficEvent): void {
    if (this.length === this.capacity) this.grow();
    const i = this.length++;
    if (i > 0 && e.t < this.t[i - 1]) this.sorted = false;
    this.t[i] = e.t;
    this.columns.remoteAddr[i] = this.intern(e.remoteAddr);
    this.columns.xff[i] = e.xff === undefined ? -1 : this.intern(e.xff);
    this.columns.proxy[i] = e.proxy === undefined ? -1 : this.intern(e.proxy);
    this.columns.entryPoint[i] = this.intern(e.entryPoint);
    this.columns.router[i] = this.intern(e.router);
    this.auth[i] = e.auth === "ok" ? AUTH_OK : e.auth === "fail" ? AUTH_FAIL : AUTH_NONE;
    this.profile[i] = e.profile ?? -1;
  }

  build(): Traffic {
    const n = this.length;
    const order = this.sorted ? undefined : this.timeOrder();
    const pick = <A extends Column>(column: A): A => {
      const out = column.slice(0, n) as A;
      if (order) for (let i = 0; i < n; i++) out[i] = column[order[i]];
      return out;
    };
    return {
      length: n,
      t: pick(this.t),
      remoteAddr: pick(this.columns.remoteAddr),
      xff: pick(this.columns.xff),
      proxy: pick(this.columns.proxy),
      entryPoint: pick(this.columns.entryPoint),
      router: pick(this.columns.router),
      auth: pick(this.auth),
      profile: pick(this.profile),
      strings: this.strings,
      profiles: this.profiles,
    };
  }

  private timeOrder(): Uint32Array {
    const t = this.t;
    const order = Array.from({ length: this.length }, (_, i) => i);
    order.sort((a, b) => t[a] - t[b] || a - b);
    return Uint32Array.from(order);
  }

  private grow(): void {
    const capacity = (this.capacity *= 2);
    this.t = widen(this.t, capacity);
    this.columns = {
      remoteAddr: widen(this.columns.remoteAddr, capacity),
      xff: widen(this.columns.xff, capacity),
      proxy: widen(this.columns.proxy, capacity),
      entryPoint: widen(this.columns.entryPoint, capacity),
      router: widen(this.columns.router, capacity),
    };
    this.auth = widen(this.auth, capacity);
    this.profile = widen(this.profile, capacity);
  }
}
