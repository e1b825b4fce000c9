/**
 * A small SMTP client that can speak for many clients through one proxy (a PROXY v1 or v2
 * header first, as Traefik sends it), and a capturing SMTP server standing in for the
 * smarthost. Both only ever touch 127.0.0.1: the addresses in PROXY headers are data.
 */
import * as net from "node:net";
import * as tls from "node:tls";
import { randomUUID } from "node:crypto";

export const LOOPBACK = "127.0.0.1";

/** One SMTP reply: the code and the text of every line. */
export interface Reply {
  code: number;
  lines: string[];
}

export const replyText = (r: Reply) => `${r.code} ${r.lines.join(" / ")}`;

export type ProxyVersion = 1 | 2;

/** The 12-byte signature every PROXY v2 header starts with. */
const PROXY_V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);

/** A PROXY header announcing a TCP4 connection from `client` to `server`. */
export function proxyHeader(
  version: ProxyVersion,
  client: string,
  server: string,
  clientPort: number,
  serverPort: number,
): Buffer {
  if (!net.isIPv4(client) || !net.isIPv4(server))
    throw new Error(`PROXY header: IPv4 addresses only, got ${client} -> ${server}`);
  if (version === 1)
    return Buffer.from(`PROXY TCP4 ${client} ${server} ${clientPort} ${serverPort}\r\n`, "ascii");

  const body = Buffer.alloc(12);
  Buffer.from(client.split(".").map(Number)).copy(body, 0);
  Buffer.from(server.split(".").map(Number)).copy(body, 4);
  body.writeUInt16BE(clientPort, 8);
  body.writeUInt16BE(serverPort, 10);
  // Version 2, command PROXY; family AF_INET over STREAM; then the address block length.
  const head = Buffer.from([0x21, 0x11, 0x00, body.length]);
  return Buffer.concat([PROXY_V2_SIGNATURE, head, body]);
}

export interface ConnectOptions {
  port: number;
  /** Send a PROXY header naming this client address before anything else. */
  proxyFrom?: string;
  proxyVersion?: ProxyVersion;
  /** Give up on a reply after this many milliseconds. */
  timeoutMs?: number;
}

/**
 * One SMTP conversation. Replies are read line by line; a reply ends at the line whose
 * fourth character is a space.
 */
export class SmtpSession {
  private socket: net.Socket | tls.TLSSocket;
  private buffered = "";
  private waiting?: { resolve: (r: Reply) => void; reject: (e: Error) => void };
  private pending: Reply[] = [];
  private current: string[] = [];
  private closedWith?: Error;
  readonly timeoutMs: number;

  private constructor(socket: net.Socket, timeoutMs: number) {
    this.socket = socket;
    this.timeoutMs = timeoutMs;
    this.listen(socket);
  }

  /** Connects, sends the PROXY header if asked, and returns the session with its greeting. */
  static async open(options: ConnectOptions): Promise<{ session: SmtpSession; greeting: Reply }> {
    const socket = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.connect({ host: LOOPBACK, port: options.port }, () => resolve(s));
      s.once("error", reject);
    });
    const session = new SmtpSession(socket, options.timeoutMs ?? 10_000);
    if (options.proxyFrom) {
      const clientPort = 20_000 + Math.floor(Math.random() * 40_000);
      socket.write(
        proxyHeader(
          options.proxyVersion ?? 1,
          options.proxyFrom,
          LOOPBACK,
          clientPort,
          options.port,
        ),
      );
    }
    try {
      return { session, greeting: await session.read() };
    } catch (err) {
      session.destroy();
      throw err;
    }
  }

  private listen(socket: net.Socket | tls.TLSSocket): void {
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => this.receive(chunk));
    socket.on("error", (err) => this.fail(err));
    socket.on("close", () => this.fail(new Error("connection closed by the server")));
  }

  private receive(chunk: string): void {
    this.buffered += chunk;
    let end: number;
    while ((end = this.buffered.indexOf("\r\n")) >= 0) {
      const line = this.buffered.slice(0, end);
      this.buffered = this.buffered.slice(end + 2);
      this.current.push(line.slice(4));
      if (line.length >= 3 && line[3] !== "-") {
        this.deliver({ code: Number(line.slice(0, 3)), lines: this.current });
        this.current = [];
      }
    }
  }

  private deliver(reply: Reply): void {
    const waiter = this.waiting;
    this.waiting = undefined;
    if (waiter) waiter.resolve(reply);
    else this.pending.push(reply);
  }

  private fail(err: Error): void {
    this.closedWith ??= err;
    const waiter = this.waiting;
    this.waiting = undefined;
    waiter?.reject(err);
  }

  /** The next reply from the server. */
  read(): Promise<Reply> {
    const next = this.pending.shift();
    if (next) return Promise.resolve(next);
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`no SMTP reply within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      this.waiting = {
        resolve: (r) => (clearTimeout(timer), resolve(r)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
    });
  }

  /** Sends one command line and returns its reply. */
  command(line: string): Promise<Reply> {
    this.socket.write(`${line}\r\n`);
    return this.read();
  }

  async ehlo(name = "client.test"): Promise<Reply> {
    return this.command(`EHLO ${name}`);
  }

  /** STARTTLS, then a TLS handshake on the same socket (the test certificate is self-signed). */
  async startTls(): Promise<Reply> {
    const reply = await this.command("STARTTLS");
    if (reply.code !== 220) return reply;
    const plain = this.socket;
    plain.removeAllListeners("data");
    plain.removeAllListeners("close");
    plain.removeAllListeners("error");
    this.socket = await new Promise<tls.TLSSocket>((resolve, reject) => {
      const secure = tls.connect({ socket: plain, rejectUnauthorized: false }, () =>
        resolve(secure),
      );
      secure.once("error", reject);
    });
    this.listen(this.socket);
    return reply;
  }

  /** AUTH PLAIN with the credentials in the initial response. */
  authPlain(user: string, password: string): Promise<Reply> {
    const token = Buffer.from(`\0${user}\0${password}`, "utf8").toString("base64");
    return this.command(`AUTH PLAIN ${token}`);
  }

  /**
   * MAIL, RCPT, DATA with a unique Message-ID. Stops at the first reply that is not a
   * success and returns it; the Message-ID is returned either way.
   */
  async sendMessage(
    from: string,
    to: string,
    subject = "relay test",
  ): Promise<{ reply: Reply; messageId: string }> {
    const messageId = `<${randomUUID()}@client.test>`;
    for (const [line, expected] of [
      [`MAIL FROM:<${from}>`, 2],
      [`RCPT TO:<${to}>`, 2],
      ["DATA", 3],
    ] as const) {
      const reply = await this.command(line);
      if (Math.floor(reply.code / 100) !== expected) return { reply, messageId };
    }
    const body = [
      `From: <${from}>`,
      `To: <${to}>`,
      `Subject: ${subject}`,
      `Message-ID: ${messageId}`,
      "",
      "Test message.",
      ".",
    ];
    return { reply: await this.command(body.join("\r\n")), messageId };
  }

  async quit(): Promise<void> {
    try {
      await this.command("QUIT");
    } catch {
      /* the server may already have closed the connection */
    }
    this.destroy();
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A message the sink accepted. */
export interface CapturedMessage {
  from: string;
  to: string[];
  messageId?: string;
  /** The login the relay used upstream, if it authenticated. */
  authenticatedAs?: string;
  tls: boolean;
}

export interface SinkOptions {
  /** Certificate and key (PEM) for STARTTLS and implicit TLS. */
  tls: { cert: string; key: string };
  /** Implicit TLS from the first byte (port 465 style) instead of STARTTLS. */
  implicitTls?: boolean;
}

/**
 * The smarthost: accepts every message (AUTH with any password, STARTTLS or implicit TLS)
 * and records what it got.
 */
export class SmtpSink {
  readonly messages: CapturedMessage[] = [];
  private readonly server: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private readonly context: tls.SecureContext;

  private constructor(options: SinkOptions) {
    this.context = tls.createSecureContext(options.tls);
    const onSocket = (socket: net.Socket) => this.converse(socket, options.implicitTls === true);
    this.server = options.implicitTls
      ? tls.createServer({ ...options.tls }, onSocket)
      : net.createServer(onSocket);
  }

  static async start(options: SinkOptions): Promise<{ sink: SmtpSink; port: number }> {
    const sink = new SmtpSink(options);
    await new Promise<void>((resolve, reject) => {
      sink.server.once("error", reject);
      sink.server.listen(0, LOOPBACK, resolve);
    });
    return { sink, port: (sink.server.address() as net.AddressInfo).port };
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private converse(first: net.Socket, secure: boolean): void {
    let socket = first;
    this.sockets.add(socket);
    socket.on("close", () => this.sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    let buffered = "";
    let envelope: CapturedMessage = { from: "", to: [], tls: secure };
    let data: string[] | undefined;
    let authUser: string | undefined;
    const say = (line: string) => socket.write(`${line}\r\n`);

    const onLine = (line: string): void => {
      if (data) {
        if (line !== ".") {
          data.push(line.startsWith("..") ? line.slice(1) : line);
          return;
        }
        const idLine = data.find((l) => /^message-id:/i.test(l));
        this.messages.push({
          ...envelope,
          messageId: idLine?.replace(/^message-id:\s*/i, "").trim(),
          authenticatedAs: authUser,
        });
        envelope = { from: "", to: [], tls: envelope.tls };
        data = undefined;
        say("250 2.0.0 Ok: captured");
        return;
      }
      const verb = line.split(" ")[0].toUpperCase();
      if (verb === "EHLO" || verb === "HELO") {
        const features = ["sink.test", "PIPELINING", "8BITMIME", "AUTH PLAIN"];
        if (!envelope.tls) features.push("STARTTLS");
        features.forEach((f, i) => say(`250${i === features.length - 1 ? " " : "-"}${f}`));
      } else if (verb === "STARTTLS") {
        say("220 2.0.0 Ready to start TLS");
        socket.removeAllListeners("data");
        const secureSocket = new tls.TLSSocket(socket, {
          isServer: true,
          secureContext: this.context,
        });
        this.sockets.add(secureSocket);
        secureSocket.on("error", () => secureSocket.destroy());
        secureSocket.on("data", onData);
        socket = secureSocket;
        envelope.tls = true;
      } else if (verb === "AUTH") {
        const [, mechanism, initial] = line.split(" ");
        if (mechanism?.toUpperCase() === "PLAIN" && initial) {
          authUser = Buffer.from(initial, "base64").toString("utf8").split("\0")[1];
          say("235 2.7.0 Authentication successful");
        } else {
          say("504 5.5.4 Only AUTH PLAIN with an initial response");
        }
      } else if (verb === "MAIL") {
        envelope.from = /<([^>]*)>/.exec(line)?.[1] ?? "";
        say("250 2.1.0 Ok");
      } else if (verb === "RCPT") {
        envelope.to.push(/<([^>]*)>/.exec(line)?.[1] ?? "");
        say("250 2.1.5 Ok");
      } else if (verb === "DATA") {
        data = [];
        say("354 End data with <CR><LF>.<CR><LF>");
      } else if (verb === "QUIT") {
        say("221 2.0.0 Bye");
        socket.end();
      } else {
        say("250 2.0.0 Ok");
      }
    };
    const onData = (chunk: Buffer) => {
      buffered += chunk.toString("utf8");
      let end: number;
      while ((end = buffered.indexOf("\r\n")) >= 0) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 2);
        onLine(line);
      }
    };
    socket.on("data", onData);
    say("220 sink.test ESMTP");
  }
}
