// The package installs from the registry alone: no dependency runs an
// install script (which could fetch a binary), so `npm ci --ignore-scripts`
// installs everything there is.
import test from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

const lock = JSON.parse(readFileSync(new URL("../package-lock.json", import.meta.url), "utf8"));

test("no dependency has an install script", () => {
  const packages = Object.entries(lock.packages).filter(([path]) => path !== "");
  assert.ok(packages.length > 0);
  const scripted = packages.filter(([, p]) => p.hasInstallScript).map(([path]) => path);
  assert.deepEqual(scripted, []);
});

test("no platform-specific optional dependencies (prebuilt binaries)", () => {
  const native = Object.entries(lock.packages)
    .filter(([, p]) => p.os !== undefined || p.cpu !== undefined)
    .map(([path]) => path);
  assert.deepEqual(native, []);
});
