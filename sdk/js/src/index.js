// @sluice/sdk: the JavaScript SDK for Sluice source connectors.
//
// It wraps the component imports of the WIT world `sluice:connector/source`
// (wit/) with the concepts and names of the Rust SDK (sdk/rust/src/lib.rs):
// Spec and Stream builders, a Reader with batched emit and JSON state, an HTTP
// helper returning JSON, log.*, typed connector errors, and exportConnector(),
// which produces the world's exports (spec, check, discover, read) and turns
// every thrown exception into a `connector-error` result, never a trap.
//
//   import { exportConnector, Spec, Stream, http } from "@sluice/sdk";
//   export const { spec, check, discover, read } = exportConnector({
//     spec: () => new Spec("hello", "0.1.0").stream(
//       new Stream("greetings", { type: "object", properties: { id: { type: "integer" } } })
//         .primaryKey(["id"]).incremental("id")),
//     read(config, reader) {
//       const since = reader.state("greetings");
//       reader.emit("greetings", { id: 1 });      // batched: one host call per 500
//       reader.commit("greetings", { id: 1 });    // records + state, one transaction
//     },
//   });
//
// The build (scripts/build-js-connectors.sh) bundles a connector and this SDK
// with esbuild and hands the bundle to componentize-qjs together with wit/:
// the `sluice:connector/*` modules imported below are the component's imports,
// bound from wit/ at build time.

import * as witHttp from "sluice:connector/http@0.1.0";
import * as witLog from "sluice:connector/log@0.1.0";
import * as witSink from "sluice:connector/sink@0.1.0";
import * as witState from "sluice:connector/state@0.1.0";

/** Records buffered per stream before one `sink.emit` host call. */
export const DEFAULT_BATCH_SIZE = 500;
/** Characters of a non-success response body quoted in an UpstreamError. */
export const ERROR_BODY_SNIPPET = 300;
/** Bytes turned into a string per `String.fromCharCode` call while decoding UTF-8. */
const UTF8_CHUNK = 8192;

// ---------------------------------------------------------------- errors

/**
 * A connector error, reported to the host as the WIT `connector-error` whose
 * case is `kind` ("config" | "upstream" | "host" | "internal").
 */
export class SluiceError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "SluiceError";
    this.kind = kind;
  }
}
/** The config is invalid. */
export class ConfigError extends SluiceError {
  constructor(message) {
    super("config", message);
    this.name = "ConfigError";
  }
}
/** The upstream failed or answered something unusable. */
export class UpstreamError extends SluiceError {
  constructor(message) {
    super("upstream", message);
    this.name = "UpstreamError";
  }
}
/** A host capability refused (HTTP denied, sink or state error). */
export class HostError extends SluiceError {
  constructor(message) {
    super("host", message);
    this.name = "HostError";
  }
}
/** Anything else. */
export class InternalError extends SluiceError {
  constructor(message) {
    super("internal", message);
    this.name = "InternalError";
  }
}

/** The four connector-error kinds as constructors, like the Rust SDK's `Error::Config(..)`. */
export const errors = {
  config: (m) => new ConfigError(m),
  upstream: (m) => new UpstreamError(m),
  host: (m) => new HostError(m),
  internal: (m) => new InternalError(m),
};

// An error value thrown by an import (`result<_, E>` imports throw an Error
// whose `payload` is the WIT variant `{tag, val}`).
function witErrorPayload(e) {
  if (e && typeof e === "object" && e.payload && typeof e.payload.tag === "string") {
    return e.payload;
  }
  if (e && typeof e === "object" && typeof e.tag === "string" && !(e instanceof Error)) {
    return e;
  }
  return null;
}

// ---------------------------------------------------------------- text

/**
 * Decode UTF-8 bytes (a Uint8Array or array of numbers) to a string. Invalid
 * sequences become U+FFFD, or, with `{fatal: true}`, throw a TypeError (as
 * TextDecoder does).
 */
export function decodeUtf8(bytes, { fatal = false } = {}) {
  if (typeof TextDecoder === "function") return new TextDecoder("utf-8", { fatal }).decode(bytes);
  // QuickJS has no TextDecoder: read the bytes as Latin-1 (native), then let
  // decodeURIComponent(escape(..)) decode each run of non-ASCII bytes as UTF-8
  // (native too). Measured on GitHub-shaped pages (72 KB, ~370 non-ASCII
  // runs): ~45 M fuel a page, two thirds of it QuickJS's per-match regex
  // overhead; escaping the whole text costs more, a per-byte JS loop far more.
  const parts = [];
  for (let i = 0; i < bytes.length; i += UTF8_CHUNK) {
    parts.push(String.fromCharCode.apply(null, bytes.subarray ? bytes.subarray(i, i + UTF8_CHUNK) : bytes.slice(i, i + UTF8_CHUNK)));
  }
  const latin1 = parts.join("");
  try {
    return latin1.replace(/[\x80-\xff]+/g, (run) => decodeURIComponent(escape(run)));
  } catch {
    if (fatal) throw new TypeError("invalid UTF-8");
    return decodeLossy(bytes);
  }
}

// Invalid UTF-8: the WHATWG decoder (as TextDecoder), U+FFFD for each
// maximal invalid subpart. Only for invalid input, so plain and slow is fine.
function decodeLossy(bytes) {
  const out = [];
  let cp = 0;
  let needed = 0;
  let seen = 0;
  let lower = 0x80;
  let upper = 0xbf;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    if (needed === 0) {
      if (b <= 0x7f) {
        out.push(String.fromCharCode(b));
      } else if (b >= 0xc2 && b <= 0xdf) {
        needed = 1;
        cp = b & 0x1f;
      } else if (b >= 0xe0 && b <= 0xef) {
        if (b === 0xe0) lower = 0xa0;
        if (b === 0xed) upper = 0x9f;
        needed = 2;
        cp = b & 0xf;
      } else if (b >= 0xf0 && b <= 0xf4) {
        if (b === 0xf0) lower = 0x90;
        if (b === 0xf4) upper = 0x8f;
        needed = 3;
        cp = b & 0x7;
      } else {
        out.push("\uFFFD");
      }
      continue;
    }
    if (b < lower || b > upper) {
      cp = needed = seen = 0;
      lower = 0x80;
      upper = 0xbf;
      out.push("\uFFFD");
      i--; // this byte starts afresh
      continue;
    }
    lower = 0x80;
    upper = 0xbf;
    cp = (cp << 6) | (b & 0x3f);
    seen++;
    if (seen === needed) {
      out.push(String.fromCodePoint(cp));
      cp = needed = seen = 0;
    }
  }
  if (needed !== 0) out.push("\uFFFD");
  return out.join("");
}

/** Encode a string as UTF-8 bytes. */
export function encodeUtf8(text) {
  const bin = unescape(encodeURIComponent(text));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

// ---------------------------------------------------------------- log

function logAt(level) {
  return (message) => witLog.log(level, String(message));
}

/** Logging into the host's run log (tagged by the host with run id and connector). */
export const log = {
  trace: logAt("trace"),
  debug: logAt("debug"),
  info: logAt("info"),
  warn: logAt("warn"),
  error: logAt("error"),
};

// ---------------------------------------------------------------- http

// http-error kinds that are the upstream's failure, not a host refusal.
const TRANSPORT_FAILURES = new Set(["timeout", "connect", "other"]);

function httpErrorText(url, err) {
  switch (err.tag) {
    case "denied":
      return `request to ${url} denied: ${err.val}`;
    case "invalid-request":
      return `invalid request to ${url}: ${err.val}`;
    case "timeout":
      return `request to ${url} timed out`;
    case "connect":
      return `cannot connect to ${url}: ${err.val}`;
    case "too-large":
      return `response from ${url} over ${err.val} bytes`;
    case "budget-exhausted":
      return "HTTP request budget of this run is spent";
    case "circuit-open":
      return `request to ${url} not sent, circuit open: ${err.val}`;
    default:
      return `request to ${url} failed: ${err.val}`;
  }
}

/** An HTTP response: status, headers (names lower-cased), body bytes. */
export class Response {
  constructor(status, headers, body) {
    this.status = status;
    this.headers = headers;
    this.body = body;
  }

  /** The first header named `name` (case-insensitive), or null. */
  header(name) {
    const want = name.toLowerCase();
    for (const [k, v] of this.headers) if (k.toLowerCase() === want) return v;
    return null;
  }

  /** The body as text (UTF-8; invalid sequences become U+FFFD). */
  text() {
    return decodeUtf8(this.body);
  }

  /** The body decoded as JSON; an UpstreamError when it is not UTF-8 JSON. */
  json() {
    try {
      return JSON.parse(decodeUtf8(this.body, { fatal: true }));
    } catch (e) {
      throw new UpstreamError(`response is not the expected JSON: ${e.message}`);
    }
  }

  /** This response, or an UpstreamError unless the status is 2xx. */
  errorForStatus() {
    if (this.status >= 200 && this.status < 300) return this;
    throw new UpstreamError(`HTTP ${this.status}: ${this.text().slice(0, ERROR_BODY_SNIPPET)}`);
  }
}

/** A request being built: `Request.get(url).header(k, v).send()`. */
export class Request {
  constructor(method, url, body = null) {
    this.method = method;
    this.url = url;
    this.headers = [];
    this.body = body;
    this.isRetryable = false;
  }

  static get(url) {
    return new Request("get", url);
  }

  /** A POST with a body (a string is sent as UTF-8). */
  static post(url, body) {
    return new Request("post", url, typeof body === "string" ? encodeUtf8(body) : body);
  }

  header(name, value) {
    this.headers.push([name, String(value)]);
    return this;
  }

  /**
   * Let the host retry this request after a transient failure even if its
   * method is not idempotent. GET, HEAD, PUT and DELETE always are.
   */
  retryable(yes) {
    this.isRetryable = !!yes;
    return this;
  }

  /**
   * Send through the host. What the host refused or stopped (a denial, an
   * invalid request, a response over the limit, the spent budget, an open
   * breaker) is a HostError; a transport failure its retries did not
   * overcome (timeout, connect error, reset) is an UpstreamError.
   */
  send() {
    let r;
    try {
      r = witHttp.send({
        method: this.method,
        url: this.url,
        headers: this.headers,
        body: this.body,
        retryable: this.isRetryable,
      });
    } catch (e) {
      const err = witErrorPayload(e);
      if (err) {
        const text = httpErrorText(this.url, err);
        throw TRANSPORT_FAILURES.has(err.tag) ? new UpstreamError(text) : new HostError(text);
      }
      throw e;
    }
    return new Response(r.status, r.headers, r.body);
  }
}

/** Outbound HTTP through the host: only hosts the operator granted are reachable. */
export const http = {
  Request,
  Response,
  /** Send a request built with `Request`. */
  send: (request) => request.send(),
  /** GET `url` (optional headers as an object) and decode a 2xx JSON body. */
  getJson(url, headers = {}) {
    const req = Request.get(url);
    for (const [k, v] of Object.entries(headers)) req.header(k, v);
    return req.send().errorForStatus().json();
  },
};

// ---------------------------------------------------------------- spec

/** How a stream is synchronised (the WIT `sync-mode` cases). */
export const SyncMode = Object.freeze({
  FullRefresh: "full-refresh",
  Incremental: "incremental",
});

/** A stream a connector can read: `new Stream(name, jsonSchema)`, full refresh until `incremental()`. */
export class Stream {
  constructor(name, schema) {
    this.name = name;
    this.schema = schema;
    this.primaryKeyFields = [];
    this.cursorField = null;
    this.syncModes = [SyncMode.FullRefresh];
  }

  /** Set the primary key (top-level field names). */
  primaryKey(fields) {
    this.primaryKeyFields = [...fields];
    return this;
  }

  /** Mark the stream incremental on `cursorField`. */
  incremental(cursorField) {
    this.cursorField = cursorField;
    if (!this.syncModes.includes(SyncMode.Incremental)) this.syncModes.push(SyncMode.Incremental);
    return this;
  }

  toWit() {
    return {
      name: this.name,
      jsonSchema: JSON.stringify(this.schema),
      primaryKey: this.primaryKeyFields,
      cursorField: this.cursorField,
      syncModes: this.syncModes,
    };
  }
}

/** What a connector is: `new Spec(name, version).description(..).configSchema(..).stream(..)`. */
export class Spec {
  constructor(name, version) {
    this.name = name;
    this.version = version;
    this.descriptionText = "";
    this.configSchemaValue = { type: "object" };
    this.streams = [];
  }

  description(text) {
    this.descriptionText = text;
    return this;
  }

  configSchema(schema) {
    this.configSchemaValue = schema;
    return this;
  }

  stream(s) {
    this.streams.push(s);
    return this;
  }

  toWit() {
    return {
      name: this.name,
      version: this.version,
      description: this.descriptionText,
      configSchema: JSON.stringify(this.configSchemaValue),
      streams: this.streams.map((s) => s.toWit()),
    };
  }
}

// ---------------------------------------------------------------- reader

function sinkErrorText(err) {
  switch (err.tag) {
    case "unknown-stream":
      return `unknown stream ${err.val}`;
    case "invalid-record":
      return `record ${err.val[0]} invalid: ${err.val[1]}`;
    case "too-large":
      return `too large: ${err.val}`;
    default:
      return `store: ${err.val}`;
  }
}

function stateErrorText(err) {
  switch (err.tag) {
    case "unknown-stream":
      return `unknown stream ${err.val}`;
    case "too-large":
      return `state value too large (${err.val} bytes)`;
    default:
      return `store: ${err.val}`;
  }
}

/**
 * The handle `read` gets: emit records, read and commit state. Records are
 * buffered per stream and handed to the host in batches of `batchSize`;
 * `commit` flushes every buffer first, so the state commits together with
 * every record emitted before it.
 */
export class Reader {
  constructor(streams) {
    this.configured = streams.map((s) => ({ name: s.name, syncMode: s.syncMode }));
    this.buffers = new Map();
    this.batchSize = DEFAULT_BATCH_SIZE;
    this.count = 0;
  }

  /** The streams the operator selected: `[{name, syncMode}]`. */
  streams() {
    return this.configured;
  }

  /** The sync mode `name` was selected in (a SyncMode value), or null. */
  selected(name) {
    const s = this.configured.find((c) => c.name === name);
    return s ? s.syncMode : null;
  }

  /** Change how many records are buffered per host call. */
  setBatchSize(n) {
    this.batchSize = Math.max(1, Math.floor(n));
  }

  /** Records emitted so far in this run. */
  emitted() {
    return this.count;
  }

  /** Emit one record (a JSON object) of `stream`; sent when its batch is full. */
  emit(stream, record) {
    let buf = this.buffers.get(stream);
    if (!buf) {
      buf = [];
      this.buffers.set(stream, buf);
    }
    buf.push(JSON.stringify(record));
    this.count += 1;
    if (buf.length >= this.batchSize) this.flushStream(stream);
  }

  /** Send every buffered record to the host now. */
  flush() {
    for (const name of this.buffers.keys()) this.flushStream(name);
  }

  flushStream(stream) {
    const buf = this.buffers.get(stream);
    if (!buf || buf.length === 0) return;
    this.buffers.set(stream, []);
    try {
      witSink.emit(stream, buf);
    } catch (e) {
      const err = witErrorPayload(e);
      if (err) throw new HostError(sinkErrorText(err));
      throw e;
    }
  }

  /** The last committed state of `stream`, decoded from JSON, or null. */
  state(stream) {
    const text = witState.get(stream);
    if (text === null || text === undefined) return null;
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new InternalError(`state of ${stream} is not valid: ${e.message}`);
    }
  }

  /** Flush every buffered record, then commit `value` (JSON) as the new state of `stream`. */
  commit(stream, value) {
    this.flush();
    try {
      witState.commit(stream, JSON.stringify(value));
    } catch (e) {
      const err = witErrorPayload(e);
      if (err) throw new HostError(stateErrorText(err));
      throw e;
    }
  }
}

// ---------------------------------------------------------------- exports

// What an exception becomes: the WIT `connector-error` variant. A SluiceError
// keeps its kind; anything else (a TypeError, say) is `internal`, with its
// name and message, and its stack goes to the log.
function toConnectorError(e) {
  if (e instanceof SluiceError) return { tag: e.kind, val: e.message };
  const payload = witErrorPayload(e);
  if (payload) return { tag: "internal", val: `unexpected host error: ${JSON.stringify(payload)}` };
  const text = e instanceof Error ? `${e.name}: ${e.message}` : `uncaught exception: ${String(e)}`;
  if (e instanceof Error && e.stack) log.error(`${text}\n${e.stack}`);
  return { tag: "internal", val: text };
}

function guarded(f) {
  return (...args) => {
    try {
      return f(...args);
    } catch (e) {
      // componentize-qjs lowers a thrown `{tag, val}` to the `err` case.
      throw toConnectorError(e);
    }
  };
}

/**
 * Turn a connector into the `source` world's exports:
 *
 *   export const { spec, check, discover, read } = exportConnector({
 *     spec(),                       // -> Spec
 *     config(value),                // optional: the parsed config JSON -> the config read() gets
 *                                   //   (apply defaults, throw ConfigError when invalid)
 *     check(config),                // optional: throw ConfigError when invalid
 *     discover(config),             // optional: -> [Stream]; by default the spec's
 *     read(config, reader),         // emit records, commit state
 *   });
 *
 * Every exception thrown by these becomes a `connector-error` result: a
 * SluiceError (ConfigError, UpstreamError, HostError, InternalError) keeps
 * its kind, anything else is `internal`.
 */
export function exportConnector(connector) {
  const parse = (text) => {
    let value;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new ConfigError(`config is not JSON: ${e.message}`);
    }
    return connector.config ? connector.config(value) : value;
  };
  return {
    spec() {
      try {
        return connector.spec().toWit();
      } catch (e) {
        // `spec` cannot return an error: log why, then trap.
        log.error(`spec failed: ${toConnectorError(e).val}`);
        throw e;
      }
    },
    check: guarded((text) => {
      const config = parse(text);
      if (connector.check) connector.check(config);
    }),
    discover: guarded((text) => {
      const config = parse(text);
      const streams = connector.discover ? connector.discover(config) : connector.spec().streams;
      return streams.map((s) => s.toWit());
    }),
    read: guarded((text, streams) => {
      const config = parse(text);
      const reader = new Reader(streams);
      connector.read(config, reader);
      reader.flush();
      return { records: reader.emitted() };
    }),
  };
}
