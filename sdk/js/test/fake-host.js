// A fake host for unit tests under Node: stands in for the component
// imports `sluice:connector/{sink,state,log,http}@0.1.0` (test/run.mjs maps
// them here when bundling) and records every call.

export const calls = { emit: [], commit: [], log: [], send: [] };
export const store = new Map();
export const responses = [];

export function reset() {
  calls.emit.length = 0;
  calls.commit.length = 0;
  calls.log.length = 0;
  calls.send.length = 0;
  store.clear();
  responses.length = 0;
}

// An import's `result` error, as componentize-qjs throws it.
function witError(tag, val) {
  const e = new Error(tag);
  e.payload = { tag, val };
  return e;
}

export const sink = {
  emit(stream, records) {
    if (stream === "undeclared") throw witError("unknown-stream", stream);
    calls.emit.push([stream, [...records]]);
  },
};

export const state = {
  get(stream) {
    return store.has(stream) ? store.get(stream) : null;
  },
  commit(stream, value) {
    calls.commit.push([stream, value]);
    store.set(stream, value);
  },
};

export const log = {
  log(level, message) {
    calls.log.push([level, message]);
  },
};

export const http = {
  send(req) {
    calls.send.push(req);
    const next = responses.shift();
    if (!next) throw witError("denied", `${req.url} is not granted`);
    // `{ error: { tag, val } }` queues an http-error instead of an answer.
    if (next.error) throw witError(next.error.tag, next.error.val);
    return next;
  },
};
