// Unit tests of the JS SDK (and of github-issues-js's pure functions) under
// Node's test runner: esbuild bundles test/*.test.js with the component
// imports mapped to test/fake-host.js, then `node --test` runs the bundle.
// Used by scripts/test-js-sdk.sh.
import { createRequire } from "node:module";
import { spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "../../..");
const require = createRequire(path.join(root, ".tools/js-guest/package.json"));
const esbuild = require("esbuild");
const out = path.join(root, "connectors/target/js-sdk-test");
mkdirSync(out, { recursive: true });

// Each import module re-exports the fake host's functions of that interface.
const SHIMS = {
  sink: ["emit"],
  state: ["get", "commit"],
  log: ["log"],
  http: ["send"],
};
const fakeHost = {
  name: "fake-host",
  setup(build) {
    build.onResolve({ filter: /^sluice:connector\/(sink|state|log|http)@0\.1\.0$/ }, (args) => ({
      path: args.path.match(/\/(\w+)@/)[1],
      namespace: "fake-host",
    }));
    build.onLoad({ filter: /.*/, namespace: "fake-host" }, (args) => ({
      contents:
        `import { ${args.path} as m } from ${JSON.stringify(path.join(here, "fake-host.js"))};\n` +
        SHIMS[args.path].map((f) => `export const ${f} = (...a) => m.${f}(...a);`).join("\n"),
      resolveDir: here,
    }));
  },
};

await esbuild.build({
  entryPoints: [path.join(here, "sdk.test.js")],
  bundle: true,
  format: "esm",
  platform: "node",
  outfile: path.join(out, "sdk.test.mjs"),
  alias: { "@sluice/sdk": path.join(root, "sdk/js/src/index.js") },
  plugins: [fakeHost],
  logLevel: "warning",
});
const r = spawnSync(process.execPath, ["--test", path.join(out, "sdk.test.mjs")], { stdio: "inherit" });
process.exit(r.status ?? 1);
