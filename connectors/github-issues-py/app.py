"""`github-issues-py`: a GitHub repository's issues (pull requests included,
as GitHub lists them) through the REST API:
`GET /repos/{owner}/{repo}/issues?state=all&sort=updated&direction=asc
&per_page=N[&since=TS]`, following the `Link: <…>; rel="next"` header.

One stream, `issues`, keyed by `id`, incremental on `updated_at`: the state
is the largest `updated_at` committed; each page is emitted and committed
with its cursor. GitHub's `since` is inclusive, so the issue at the cursor
is read again and upserted in place (idempotent).

The same connector exists in Rust (connectors/github-issues) and
JavaScript (connectors/github-issues-js); all three store identical tables.
"""

import json
from urllib.parse import quote

import sluice_sdk as sluice
from sluice_sdk.http import ERROR_BODY_SNIPPET, Request

VERSION = "0.1.0"
STREAM = "issues"
#: The real API, when the config names no `base_url`.
DEFAULT_BASE_URL = "https://api.github.com"
#: GitHub's largest page, asked for when the config names none.
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 100
#: The REST API version this connector speaks.
API_VERSION = "2022-11-28"

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["owner", "repo"],
    "properties": {
        "base_url": {"type": "string", "default": DEFAULT_BASE_URL},
        "owner": {"type": "string"},
        "repo": {"type": "string"},
        "per_page": {"type": "integer", "minimum": 1, "maximum": MAX_PER_PAGE, "default": DEFAULT_PER_PAGE},
        "token_secret": {"type": "string"},
        "start_date": {"type": "string"},
    },
}

RECORD_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["id", "number", "title", "state", "created_at", "updated_at"],
    "properties": {
        "id": {"type": "integer"},
        "number": {"type": "integer"},
        "title": {"type": "string"},
        "state": {"type": "string"},
        "user_login": {"type": ["string", "null"]},
        "labels": {"type": "array", "items": {"type": "string"}},
        "comments": {"type": "integer"},
        "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "closed_at": {"type": ["string", "null"]},
        "body": {"type": ["string", "null"]},
        "is_pull_request": {"type": "boolean"},
        "html_url": {"type": "string"},
    },
}


def stream():
    return sluice.Stream(STREAM, RECORD_SCHEMA).primary_key(["id"]).incremental("updated_at")


def settings(config):
    """The config with its defaults; a ConfigError for unknown or mistyped fields."""
    for key in config:
        if key not in CONFIG_SCHEMA["properties"]:
            raise sluice.ConfigError(f"unknown field `{key}`")
    for key in CONFIG_SCHEMA["required"]:
        if key not in config:
            raise sluice.ConfigError(f"missing field `{key}`")
    c = {
        "base_url": DEFAULT_BASE_URL,
        "per_page": DEFAULT_PER_PAGE,
        "token_secret": None,
        "start_date": None,
        **config,
    }
    for key in ("base_url", "owner", "repo"):
        if not isinstance(c[key], str):
            raise sluice.ConfigError(f"`{key}` must be a string")
    if not isinstance(c["per_page"], int) or isinstance(c["per_page"], bool):
        raise sluice.ConfigError("`per_page` must be an integer")
    return c


def next_link(link):
    """The `rel="next"` URL of a `Link` header, or None."""
    for part in link.split(","):
        url, sep, params = part.partition(";")
        if not sep:
            continue
        url = url.strip()
        is_next = any(p.strip().replace(" ", "") == 'rel="next"' for p in params.split(";"))
        if is_next and url.startswith("<") and url.endswith(">"):
            return url[1:-1]
    return None


def record(issue):
    """The stored record of one GitHub issue."""
    user = issue.get("user")
    return {
        "id": issue.get("id"),
        "number": issue.get("number"),
        "title": issue.get("title"),
        "state": issue.get("state"),
        "user_login": user.get("login") if isinstance(user, dict) else None,
        "labels": [l["name"] for l in issue.get("labels") or [] if isinstance(l, dict) and "name" in l],
        "comments": issue.get("comments"),
        "created_at": issue.get("created_at"),
        "updated_at": issue.get("updated_at"),
        "closed_at": issue.get("closed_at"),
        "body": issue.get("body"),
        "is_pull_request": "pull_request" in issue,
        "html_url": issue.get("html_url"),
    }


def upstream_error(status, body):
    """The error for a non-2xx answer: GitHub's `message`, else the body text."""
    try:
        text = json.loads(body.decode("utf-8"))["message"]
        if not isinstance(text, str):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        text = body[:ERROR_BODY_SNIPPET].decode("utf-8", errors="replace")
    return sluice.UpstreamError(f"GitHub answered {status}: {text}")


class GithubIssues(sluice.Connector):
    @classmethod
    def spec(cls):
        return (
            sluice.Spec("github-issues-py", VERSION)
            .description("A GitHub repository's issues and pull requests (REST API)")
            .config_schema(CONFIG_SCHEMA)
            .stream(stream())
        )

    def check(self, config):
        c = settings(config)
        if not c["base_url"].startswith(("http://", "https://")):
            raise sluice.ConfigError("`base_url` must be an http(s) URL")
        if not 1 <= c["per_page"] <= MAX_PER_PAGE:
            raise sluice.ConfigError(f"`per_page` must be 1..={MAX_PER_PAGE}")
        if not c["owner"] or not c["repo"]:
            raise sluice.ConfigError("`owner` and `repo` must not be empty")
        return c

    def discover(self, config):
        self.check(config)
        return [stream()]

    def read(self, config, reader):
        c = self.check(config)
        mode = reader.selected(STREAM)
        if mode is None:
            return
        state = (reader.state(STREAM) or {}) if mode == sluice.SyncMode.INCREMENTAL else {}
        cursor = state.get("updated_at")
        reader.set_batch_size(c["per_page"])
        url = "{}/repos/{}/{}/issues?state=all&sort=updated&direction=asc&per_page={}".format(
            c["base_url"].rstrip("/"), quote(c["owner"], safe=""), quote(c["repo"], safe=""), c["per_page"]
        )
        since = cursor or c["start_date"]
        if since:
            url += "&since=" + quote(since, safe="")
        while True:
            req = (
                Request.get(url)
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION)
                .header("User-Agent", "sluice-github-issues")
            )
            if c["token_secret"]:
                req.header("Authorization", "Bearer {{secret:" + c["token_secret"] + "}}")
            resp = req.send()
            if not 200 <= resp.status < 300:
                raise upstream_error(resp.status, resp.body)
            issues = resp.json()
            if not isinstance(issues, list):
                raise sluice.UpstreamError("response is not the expected JSON: not an array of issues")
            if not issues:
                break
            for issue in issues:
                rec = record(issue)
                u = rec["updated_at"]
                if isinstance(u, str) and (cursor is None or u > cursor):
                    cursor = u
                reader.emit(STREAM, rec)
            # The page and the cursor past it become durable together.
            reader.commit(STREAM, {"updated_at": cursor})
            nxt = next_link(resp.header("link") or "")
            if nxt is None:
                break
            url = nxt


WitWorld = sluice.export(GithubIssues)
