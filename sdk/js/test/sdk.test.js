// Unit tests of @sluice/sdk and of github-issues-js's pure functions, against
// the fake host (fake-host.js). Run by scripts/test-js-sdk.sh.
import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

import {
  ConfigError,
  DEFAULT_BATCH_SIZE,
  Reader,
  Request,
  Spec,
  Stream,
  SyncMode,
  UpstreamError,
  decodeUtf8,
  encodeUtf8,
  exportConnector,
  http,
} from "@sluice/sdk";
import { encode, nextLink, record } from "../../../connectors/github-issues-js/src/index.js";
import { calls, reset, responses, store } from "./fake-host.js";

beforeEach(reset);

const bytes = (s) => new Uint8Array(Buffer.from(s, "utf8"));

test("emit is batched: one host call per batch, commit flushes first", () => {
  const r = new Reader([{ name: "items", syncMode: "incremental" }]);
  r.setBatchSize(3);
  for (let id = 1; id <= 7; id++) r.emit("items", { id });
  assert.equal(calls.emit.length, 2, "two full batches of 3");
  assert.deepEqual(calls.emit[0], ["items", ['{"id":1}', '{"id":2}', '{"id":3}']]);
  r.commit("items", { id: 7 });
  assert.equal(calls.emit.length, 3, "the 7th record is flushed before the commit");
  assert.deepEqual(calls.emit[2], ["items", ['{"id":7}']]);
  assert.deepEqual(calls.commit, [["items", '{"id":7}']]);
  assert.deepEqual(r.state("items"), { id: 7 });
  assert.equal(r.emitted(), 7);
  assert.equal(DEFAULT_BATCH_SIZE, 500);
});

test("selected and streams reflect the configured streams", () => {
  const r = new Reader([{ name: "a", syncMode: "full-refresh" }]);
  assert.equal(r.selected("a"), SyncMode.FullRefresh);
  assert.equal(r.selected("b"), null);
  assert.deepEqual(r.streams(), [{ name: "a", syncMode: "full-refresh" }]);
  assert.equal(r.state("a"), null);
});

test("a sink refusal is a HostError", () => {
  const r = new Reader([]);
  r.setBatchSize(1);
  assert.throws(() => r.emit("undeclared", { id: 1 }), { name: "HostError", message: "unknown stream undeclared" });
});

test("exportConnector maps thrown exceptions to connector-error variants", () => {
  const c = exportConnector({
    spec: () => new Spec("t", "1.2.3").stream(new Stream("s", { type: "object" }).primaryKey(["id"]).incremental("id")),
    config(v) {
      if (v.bad) throw new ConfigError("bad config");
      return v;
    },
    check(v) {
      if (v.upstream) throw new UpstreamError("nope");
      if (v.typo) null.x; // eslint-disable-line no-unused-expressions
      if (v.raw) throw "a string"; // eslint-disable-line no-throw-literal
    },
    read(config, reader) {
      reader.emit("s", { id: 1 });
      reader.emit("s", { id: 2 });
    },
  });
  const spec = c.spec();
  assert.equal(spec.name, "t");
  assert.equal(spec.version, "1.2.3");
  assert.equal(spec.configSchema, '{"type":"object"}');
  assert.deepEqual(spec.streams[0].syncModes, ["full-refresh", "incremental"]);
  assert.equal(spec.streams[0].cursorField, "id");
  assert.deepEqual(c.discover("{}"), spec.streams);
  assert.equal(c.check("{}"), undefined);
  const err = (f) => {
    try {
      f();
    } catch (e) {
      return e;
    }
    assert.fail("did not throw");
  };
  assert.deepEqual(err(() => c.check("{not json")).tag, "config");
  assert.deepEqual(err(() => c.check('{"bad": true}')), { tag: "config", val: "bad config" });
  assert.deepEqual(err(() => c.check('{"upstream": true}')), { tag: "upstream", val: "nope" });
  const typo = err(() => c.check('{"typo": true}'));
  assert.equal(typo.tag, "internal");
  assert.match(typo.val, /^TypeError: /);
  assert.deepEqual(err(() => c.check('{"raw": true}')), { tag: "internal", val: "uncaught exception: a string" });
  assert.deepEqual(c.read("{}", [{ name: "s", syncMode: "incremental" }]), { records: 2 });
  assert.deepEqual(calls.emit, [["s", ['{"id":1}', '{"id":2}']]], "read flushes at the end");
});

test("http: headers, JSON, status and host errors", () => {
  responses.push({ status: 200, headers: [["link", "<x>; rel=\"next\""]], body: bytes('{"a":"ü≠😀"}') });
  const resp = Request.get("http://h/p").header("Accept", "application/json").retryable(true).send();
  assert.deepEqual(calls.send[0], {
    method: "get",
    url: "http://h/p",
    headers: [["Accept", "application/json"]],
    body: null,
    retryable: true,
  });
  assert.equal(resp.header("Link"), '<x>; rel="next"');
  assert.deepEqual(resp.json(), { a: "ü≠😀" });

  responses.push({ status: 404, headers: [], body: bytes("not here") });
  assert.throws(() => http.getJson("http://h/q"), { name: "UpstreamError", message: "HTTP 404: not here" });
  assert.throws(() => http.getJson("http://h/r"), {
    name: "HostError",
    message: "request to http://h/r denied: http://h/r is not granted",
  });
  responses.push({ status: 200, headers: [], body: new Uint8Array([0x5b, 0x22, 0xff, 0x22, 0x5d]) });
  assert.throws(() => http.getJson("http://h/s"), { name: "UpstreamError" });
});

test("a transport failure is the upstream's error; a host refusal is a HostError", () => {
  responses.push({ error: { tag: "other", val: "connection reset" } });
  assert.throws(() => http.getJson("http://h/u"), {
    name: "UpstreamError",
    message: "request to http://h/u failed: connection reset",
  });
  responses.push({ error: { tag: "timeout" } });
  assert.throws(() => http.getJson("http://h/v"), { name: "UpstreamError", message: "request to http://h/v timed out" });
  responses.push({ error: { tag: "connect", val: "no route" } });
  assert.throws(() => http.getJson("http://h/w"), { name: "UpstreamError" });
  responses.push({ error: { tag: "circuit-open", val: "open" } });
  assert.throws(() => http.getJson("http://h/x"), { name: "HostError" });
  responses.push({ error: { tag: "budget-exhausted" } });
  assert.throws(() => http.getJson("http://h/y"), { name: "HostError" });
});

// decodeUtf8 as QuickJS runs it: without TextDecoder.
function withoutTextDecoder(f) {
  const saved = globalThis.TextDecoder;
  globalThis.TextDecoder = undefined;
  try {
    return f();
  } finally {
    globalThis.TextDecoder = saved;
  }
}

test("decodeUtf8 without TextDecoder matches TextDecoder, lossy or fatal", () => {
  const cases = ["", "plain ascii", "ü ≠ u “quotes”", "emoji 😀 and 𝄞", "x".repeat(20000) + "é".repeat(9000)];
  for (const s of cases) {
    assert.equal(withoutTextDecoder(() => decodeUtf8(bytes(s))), s);
    assert.deepEqual(Buffer.from(encodeUtf8(s)), Buffer.from(s, "utf8"));
  }
  const bad = [[0xff], [0x61, 0xc3], [0xe2, 0x82], [0xe2, 0x82, 0x61], [0xed, 0xa0, 0x80], [0xc0, 0xaf, 0x62],
    [0xf4, 0x90, 0x80, 0x80], [0xf0, 0x9f, 0x98], [0x80, 0xbf], [0xe0, 0x80, 0x80], [0x63, 0xc3, 0xa9, 0xfe, 0x64]];
  for (const b of bad.map((x) => new Uint8Array(x))) {
    assert.equal(withoutTextDecoder(() => decodeUtf8(b)), new TextDecoder().decode(b), `lossy ${[...b]}`);
    assert.throws(() => withoutTextDecoder(() => decodeUtf8(b, { fatal: true })), TypeError);
    assert.throws(() => decodeUtf8(b, { fatal: true }), TypeError);
  }
});

test("Response.json refuses invalid UTF-8 without TextDecoder too", () => {
  responses.push({ status: 200, headers: [], body: new Uint8Array([0x5b, 0x22, 0xe9, 0x22, 0x5d]) });
  withoutTextDecoder(() => assert.throws(() => http.getJson("http://h/t"), { name: "UpstreamError" }));
  responses.push({ status: 200, headers: [], body: bytes('["é😀"]') });
  assert.deepEqual(withoutTextDecoder(() => http.getJson("http://h/u")), ["é😀"]);
});

test("github-issues-js: Link header, query encoding, record mapping", () => {
  assert.equal(nextLink('<http://h/r?page=2>; rel="next", <http://h/r?page=5>; rel="last"'), "http://h/r?page=2");
  assert.equal(nextLink('<http://h/r?page=1>; rel="prev", <http://h/r?page=1>; rel="first"'), null);
  assert.equal(nextLink("garbage"), null);
  assert.equal(encode("2026-01-01T00:00:00Z"), "2026-01-01T00%3A00%3A00Z");
  assert.equal(encode("a b!*'()~"), "a%20b%21%2A%27%28%29~");
  const issue = {
    id: 7, number: 1, title: "t", state: "open", user: { login: "octo" },
    labels: [{ name: "bug" }, { name: "ui" }], comments: 2, created_at: "a", updated_at: "b",
    closed_at: null, body: null, html_url: "u", pull_request: {}, extra: 1,
  };
  const r = record(issue);
  assert.equal(Object.keys(r).length, 13);
  assert.equal(r.user_login, "octo");
  assert.deepEqual(r.labels, ["bug", "ui"]);
  assert.equal(r.is_pull_request, true);
  assert.equal(record({ user: null }).user_login, null);
  assert.equal(record({}).is_pull_request, false);
  assert.equal(store.size, 0);
});
