// `{{name}}`: a Sluice source connector in JavaScript.
//
// One stream, `records`, keyed by `id` and incremental on `id`. The records
// are made up locally from the config (`{"count": N}`: ids 1..=N), so the
// skeleton runs without any network grant; replace `read` with calls to your
// upstream (`http.getJson(url)`, or `Request.get(url).header(..).send()`).
// The state is `{"id": <last id committed>}`; the next run resumes after it.

import { ConfigError, Spec, Stream, SyncMode, exportConnector, log } from "@sluice/sdk";
import pkg from "../package.json";

export const STREAM = "records";
/** Records made when the config names no `count`. */
export const DEFAULT_COUNT = 10;
/** Records committed together with their cursor. */
export const COMMIT_EVERY = 1000;

const CONFIG_SCHEMA = {
  type: "object",
  additionalProperties: false,
  properties: {
    count: { type: "integer", minimum: 0, default: DEFAULT_COUNT },
  },
};

function stream() {
  return new Stream(STREAM, {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    type: "object",
    required: ["id", "name"],
    properties: {
      id: { type: "integer" },
      name: { type: "string" },
    },
  })
    .primaryKey(["id"])
    .incremental("id");
}

export const { spec, check, discover, read } = exportConnector({
  spec: () =>
    new Spec("{{name}}", pkg.version)
      .description("{{name}}: records made from the config (a skeleton)")
      .configSchema(CONFIG_SCHEMA)
      .stream(stream()),

  // The config `read`, `check` and `discover` get: the defaults applied.
  config(value) {
    const c = { count: DEFAULT_COUNT, ...value };
    if (!Number.isInteger(c.count) || c.count < 0) {
      throw new ConfigError("`count` must be a non-negative integer");
    }
    return c;
  },

  read(config, reader) {
    const mode = reader.selected(STREAM);
    if (mode === null) return;
    const state = mode === SyncMode.Incremental ? reader.state(STREAM) : null;
    const after = state && Number.isInteger(state.id) ? state.id : 0;
    log.info(`reading ids ${after + 1}..=${config.count}`);
    for (let id = after + 1; id <= config.count; id++) {
      reader.emit(STREAM, { id, name: `record ${id}` });
      if (id % COMMIT_EVERY === 0 || id === config.count) {
        // The records so far and the cursor past them become durable together.
        reader.commit(STREAM, { id });
      }
    }
  },
});
