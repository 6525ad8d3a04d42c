"""`{{name}}`: a Sluice source connector in Python.

One stream, `records`, keyed by `id` and incremental on `id`. The records
are made up locally from the config (`{"count": N}`: ids 1..=N), so the
skeleton runs without any network grant; replace `read` with calls to your
upstream (`sluice.http.get_json(url)`, or
`sluice.http.Request.get(url).header(..).send()`). The state is
`{"id": <last id committed>}`; the next run resumes after it.
"""

import sluice_sdk as sluice

VERSION = "0.1.0"
STREAM = "records"
#: Records made when the config names no `count`.
DEFAULT_COUNT = 10
#: Records committed together with their cursor.
COMMIT_EVERY = 1000

CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "count": {"type": "integer", "minimum": 0, "default": DEFAULT_COUNT},
    },
}


def stream():
    return sluice.Stream(
        STREAM,
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id", "name"],
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
        },
    ).primary_key(["id"]).incremental("id")


class Source(sluice.Connector):
    @classmethod
    def spec(cls):
        return (
            sluice.Spec("{{name}}", VERSION)
            .description("{{name}}: records made from the config (a skeleton)")
            .config_schema(CONFIG_SCHEMA)
            .stream(stream())
        )

    def settings(self, config):
        """The config with its defaults; a ConfigError if it is unusable."""
        unknown = set(config) - set(CONFIG_SCHEMA["properties"])
        if unknown:
            raise sluice.ConfigError(f"unknown field `{sorted(unknown)[0]}`")
        count = config.get("count", DEFAULT_COUNT)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise sluice.ConfigError("`count` must be a non-negative integer")
        return {"count": count}

    def check(self, config):
        self.settings(config)

    def read(self, config, reader):
        count = self.settings(config)["count"]
        mode = reader.selected(STREAM)
        if mode is None:
            return
        state = reader.state(STREAM) if mode == sluice.SyncMode.INCREMENTAL else None
        after = state["id"] if isinstance(state, dict) and isinstance(state.get("id"), int) else 0
        sluice.log.info(f"reading ids {after + 1}..={count}")
        for i in range(after + 1, count + 1):
            reader.emit(STREAM, {"id": i, "name": f"record {i}"})
            if i % COMMIT_EVERY == 0 or i == count:
                # The records so far and the cursor past them become durable together.
                reader.commit(STREAM, {"id": i})


WitWorld = sluice.export(Source)
