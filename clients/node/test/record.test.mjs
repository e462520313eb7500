import test from "node:test";
import assert from "node:assert/strict";

import lib from "../dist/index.js";
const { parseRecord, RecordError, parseLsn, formatLsn } = lib;

const DOC =
  '{"v":1,"lsn":"0/16B3748","commit_ts":"2026-11-22T10:00:00.123456Z","xids":[1234],' +
  '"keys":["product:42"],"tags":["category:3"],"patterns":["product-list:*"]}';

test("parses the documented record", () => {
  const r = parseRecord(DOC);
  assert.equal(r.v, 1);
  assert.equal(r.lsn, "0/16B3748");
  assert.equal(r.lsnValue, 0x16b3748n);
  assert.equal(r.commit_ts, "2026-11-22T10:00:00.123456Z");
  assert.deepEqual(r.xids, [1234]);
  assert.deepEqual(r.keys, ["product:42"]);
  assert.deepEqual(r.tags, ["category:3"]);
  assert.deepEqual(r.patterns, ["product-list:*"]);
  assert.deepEqual(parseRecord(Buffer.from(DOC)), r, "bytes as Kafka delivers them");
});

test("reads scheduled invalidations", () => {
  const r = parseRecord(DOC.replace('"xids"', '"due_ts":"2026-11-22T11:00:00.000000Z","xids"'));
  assert.equal(r.due_ts, "2026-11-22T11:00:00.000000Z");
  assert.deepEqual(r.keys, ["product:42"]);
  assert.equal(parseRecord(DOC).due_ts, undefined);
  assert.throws(() => parseRecord(DOC.replace('"xids"', '"due_ts":5,"xids"')), RecordError);
});

test("ignores unknown fields", () => {
  const r = parseRecord('{"v":1,"lsn":"1/0","added_later":{"x":1},"keys":["k"],"tags":[],"patterns":[]}');
  assert.deepEqual(r.keys, ["k"]);
  assert.equal(r.lsnValue, 1n << 32n);
  assert.equal(r.added_later, undefined);
});

function refused(payload, kind) {
  assert.throws(
    () => parseRecord(payload),
    (e) => e instanceof RecordError && e.kind === kind,
    `${JSON.stringify(payload)} should be refused as ${kind}`,
  );
}

test("refuses other versions", () => {
  refused('{"v":2,"lsn":"0/1","keys":["k"],"tags":[],"patterns":[]}', "version");
  refused('{"v":"1","lsn":"0/1","keys":[]}', "version");
  refused('{"lsn":"0/1","keys":["k"]}', "version");
  refused('{"v":0,"lsn":"0/1"}', "version");
});

test("refuses malformed payloads", () => {
  refused("", "malformed");
  refused("not json", "malformed");
  refused("[1]", "malformed");
  refused("null", "malformed");
  refused('{"v":1}', "malformed");
  refused('{"v":1,"lsn":"16B3748"}', "malformed");
  refused('{"v":1,"lsn":"0/1","keys":"product:1"}', "malformed");
  refused('{"v":1,"lsn":"0/1","keys":[1]}', "malformed");
  refused('{"v":1,"lsn":"0/1","tags":[null]}', "malformed");
  refused('{"v":1,"lsn":"0/1","xids":[-1]}', "malformed");
  refused(new Uint8Array([0x7b, 0xff, 0x7d]), "malformed");
});

test("LSNs are 64-bit and round-trip", () => {
  assert.equal(parseLsn("0/0"), 0n);
  assert.equal(parseLsn("FFFFFFFF/FFFFFFFF"), 0xffffffffffffffffn);
  assert.equal(parseLsn("16/b374d848"), 0x16b374d848n);
  assert.ok(parseLsn("1/0") > parseLsn("0/FFFFFFFF"), "compared as numbers, not strings");
  assert.equal(formatLsn(0x16b374d848n), "16/B374D848");
  assert.equal(formatLsn(0n), "0/0");
  for (const bad of ["", "0", "0/", "/0", "1/2/3", "G/0", "100000000/0", " 0/1"]) {
    assert.throws(() => parseLsn(bad), RangeError, bad);
  }
  assert.throws(() => formatLsn(-1n), RangeError);
});
