// `github-issues-js`: a GitHub repository's issues (pull requests included, as
// GitHub lists them) through the REST API:
// `GET /repos/{owner}/{repo}/issues?state=all&sort=updated&direction=asc
// &per_page=N[&since=TS]`, following the `Link: <…>; rel="next"` header.
//
// One stream, `issues`, keyed by `id`, incremental on `updated_at`: the state
// is the largest `updated_at` committed; each page is emitted and committed
// with its cursor. GitHub's `since` is inclusive, so the issue at the cursor
// is read again and upserted in place (idempotent).
//
// The same connector exists in Rust (connectors/github-issues) and Python
// (connectors/github-issues-py); all three store identical tables.

import {
  ConfigError,
  ERROR_BODY_SNIPPET,
  Request,
  Spec,
  Stream,
  SyncMode,
  UpstreamError,
  exportConnector,
} from "@sluice/sdk";
import pkg from "../package.json";

export const STREAM = "issues";
/** The real API, when the config names no `base_url`. */
export const DEFAULT_BASE_URL = "https://api.github.com";
/** GitHub's largest page, asked for when the config names none. */
export const DEFAULT_PER_PAGE = 100;
export const MAX_PER_PAGE = 100;
/** The REST API version this connector speaks. */
export const API_VERSION = "2022-11-28";

const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  required: ["owner", "repo"],
  properties: {
    base_url: { type: "string", default: DEFAULT_BASE_URL },
    owner: { type: "string" },
    repo: { type: "string" },
    per_page: { type: "integer", minimum: 1, maximum: MAX_PER_PAGE, default: DEFAULT_PER_PAGE },
    token_secret: { type: "string" },
    start_date: { type: "string" },
  },
};

function stream() {
  return new Stream(STREAM, {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    type: "object",
    required: ["id", "number", "title", "state", "created_at", "updated_at"],
    properties: {
      id: { type: "integer" },
      number: { type: "integer" },
      title: { type: "string" },
      state: { type: "string" },
      user_login: { type: ["string", "null"] },
      labels: { type: "array", items: { type: "string" } },
      comments: { type: "integer" },
      created_at: { type: "string" },
      updated_at: { type: "string" },
      closed_at: { type: ["string", "null"] },
      body: { type: ["string", "null"] },
      is_pull_request: { type: "boolean" },
      html_url: { type: "string" },
    },
  })
    .primaryKey(["id"])
    .incremental("updated_at");
}

/** The config with its defaults; a ConfigError for fields of the wrong type or unknown fields. */
function config(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new ConfigError("config must be a JSON object");
  }
  for (const key of Object.keys(value)) {
    if (!(key in CONFIG_SCHEMA.properties)) throw new ConfigError(`unknown field \`${key}\``);
  }
  for (const key of CONFIG_SCHEMA.required) {
    if (!(key in value)) throw new ConfigError(`missing field \`${key}\``);
  }
  const c = { base_url: DEFAULT_BASE_URL, per_page: DEFAULT_PER_PAGE, token_secret: null, start_date: null, ...value };
  for (const key of ["base_url", "owner", "repo"]) {
    if (typeof c[key] !== "string") throw new ConfigError(`\`${key}\` must be a string`);
  }
  for (const key of ["token_secret", "start_date"]) {
    if (c[key] !== null && typeof c[key] !== "string") throw new ConfigError(`\`${key}\` must be a string`);
  }
  if (!Number.isInteger(c.per_page) || c.per_page < 0) {
    throw new ConfigError("`per_page` must be a non-negative integer");
  }
  return c;
}

function checkConfig(c) {
  if (!(c.base_url.startsWith("http://") || c.base_url.startsWith("https://"))) {
    throw new ConfigError("`base_url` must be an http(s) URL");
  }
  if (!(c.per_page >= 1 && c.per_page <= MAX_PER_PAGE)) {
    throw new ConfigError(`\`per_page\` must be 1..=${MAX_PER_PAGE}`);
  }
  if (c.owner === "" || c.repo === "") {
    throw new ConfigError("`owner` and `repo` must not be empty");
  }
}

/** Percent-encode a query value (RFC 3986 unreserved characters kept). */
export function encode(s) {
  return encodeURIComponent(s).replace(/[!'()*]/g, (ch) => "%" + ch.charCodeAt(0).toString(16).toUpperCase());
}

/** The `rel="next"` URL of a `Link` header, or null. */
export function nextLink(link) {
  for (const part of link.split(",")) {
    const semi = part.indexOf(";");
    if (semi < 0) continue;
    const url = part.slice(0, semi).trim();
    const isNext = part
      .slice(semi + 1)
      .split(";")
      .some((p) => p.trim().replace(/ /g, "") === 'rel="next"');
    if (isNext && url.startsWith("<") && url.endsWith(">")) return url.slice(1, -1);
  }
  return null;
}

/** The stored record of one GitHub issue. */
export function record(issue) {
  const field = (k) => (issue[k] === undefined ? null : issue[k]);
  const labels = Array.isArray(issue.labels)
    ? issue.labels.filter((l) => l && typeof l === "object" && "name" in l).map((l) => l.name)
    : [];
  const login = issue.user && typeof issue.user === "object" && issue.user.login !== undefined ? issue.user.login : null;
  return {
    id: field("id"),
    number: field("number"),
    title: field("title"),
    state: field("state"),
    user_login: login,
    labels,
    comments: field("comments"),
    created_at: field("created_at"),
    updated_at: field("updated_at"),
    closed_at: field("closed_at"),
    body: field("body"),
    is_pull_request: "pull_request" in issue,
    html_url: field("html_url"),
  };
}

/** The error for a non-2xx answer: GitHub's `message`, else the body text. */
function upstreamError(response) {
  const text = response.text();
  let message = null;
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === "string") message = body.message;
  } catch {
    // not JSON: quote the text
  }
  if (message === null) message = text.slice(0, ERROR_BODY_SNIPPET);
  return new UpstreamError(`GitHub answered ${response.status}: ${message}`);
}

function readIssues(c, reader) {
  checkConfig(c);
  const mode = reader.selected(STREAM);
  if (mode === null) return;
  const state = (mode === SyncMode.Incremental ? reader.state(STREAM) : null) || {};
  let cursor = typeof state.updated_at === "string" ? state.updated_at : null;
  reader.setBatchSize(c.per_page);
  let url =
    `${c.base_url.replace(/\/+$/, "")}/repos/${encode(c.owner)}/${encode(c.repo)}/issues` +
    `?state=all&sort=updated&direction=asc&per_page=${c.per_page}`;
  const since = cursor !== null ? cursor : c.start_date;
  if (since !== null) url += `&since=${encode(since)}`;
  for (;;) {
    const req = Request.get(url)
      .header("Accept", "application/vnd.github+json")
      .header("X-GitHub-Api-Version", API_VERSION)
      .header("User-Agent", "sluice-github-issues");
    if (c.token_secret !== null) req.header("Authorization", `Bearer {{secret:${c.token_secret}}}`);
    const resp = req.send();
    if (resp.status < 200 || resp.status >= 300) throw upstreamError(resp);
    const issues = resp.json();
    if (!Array.isArray(issues)) throw new UpstreamError("response is not the expected JSON: not an array");
    if (issues.length === 0) break;
    for (const issue of issues) {
      const rec = record(issue);
      if (typeof rec.updated_at === "string" && (cursor === null || rec.updated_at > cursor)) {
        cursor = rec.updated_at;
      }
      reader.emit(STREAM, rec);
    }
    // The page and the cursor past it become durable together.
    reader.commit(STREAM, { updated_at: cursor });
    const link = resp.header("link");
    const next = link === null ? null : nextLink(link);
    if (next === null) break;
    url = next;
  }
}

export const { spec, check, discover, read } = exportConnector({
  spec: () =>
    new Spec("github-issues-js", pkg.version)
      .description("A GitHub repository's issues and pull requests (REST API)")
      .configSchema(CONFIG_SCHEMA)
      .stream(stream()),
  config,
  check: checkConfig,
  discover(c) {
    checkConfig(c);
    return [stream()];
  },
  read: readIssues,
});
