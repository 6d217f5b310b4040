// The interop matrix's Node.js client: the npm `thrift` package with code generated from
// tests/idl/interop.thrift (thrift --gen js:node). Run by tests/test_interop.py with NODE_PATH
// pointing at a node_modules outside the repository.
//
//   node js_client.js GEN_DIR LABEL HOST PORT DIALECT [LABEL HOST PORT DIALECT ...]
//
// DIALECT: framed-binary | framed-compact | buffered-binary | buffered-compact
// (npm thrift 0.17's THeaderProtocol got no answer from the stock Python THeader server, so the
// Node.js client has no header dialect in the matrix.)
// Prints one line per call, "LABEL CALL JSON", JSON being a normalised form of what the call
// returned or threw (buffers as hex, i64 as hex, NaN/-0/Infinity spelled out), or
// "LABEL connection ERROR <what>" when the connection failed.
"use strict";

const path = require("path");
const thrift = require("thrift");
const Int64 = require("node-int64");

const genDir = process.argv[2];
const Interop = require(path.join(genDir, "Interop.js"));
const ttypes = require(path.join(genDir, "interop_types.js"));

const UNICODE = "h\u00e9llo \u2713 \u{1d11e} \u65e5\u672c";
const NON_UTF8 = Buffer.from([0xff, 0xfe, 0x00, 0x80, ...Buffer.from("binary"), 0xc3]);
const MIB = 1 << 20;
const I64_MIN = new Int64("8000000000000000");
const I64_MAX = new Int64("7fffffffffffffff");
const I32_MAX = 2147483647;
const I32_MIN = -2147483648;

function norm(v) {
  if (v === null || v === undefined) return null;
  if (Buffer.isBuffer(v)) return { hex: v.toString("hex") };
  if (v instanceof Int64) return { i64: v.toOctetString() };
  if (typeof v === "number") {
    if (Number.isNaN(v)) return "NaN";
    if (Object.is(v, -0)) return "-0";
    if (!Number.isFinite(v)) return v > 0 ? "Infinity" : "-Infinity";
    return v;
  }
  if (Array.isArray(v)) return v.map(norm);
  if (typeof v === "object") {
    const out = {};
    for (const key of Object.keys(v).sort()) out[key] = norm(v[key]);
    return { [(v.constructor && v.constructor.name) || "Object"]: out };
  }
  return v;
}

function batch() {
  const point = new ttypes.Point({ x: -1, y: I32_MAX });
  const scalars = new ttypes.Scalars({
    flag: true, tiny: -128, small: -32768, medium: I32_MAX, large: I64_MIN,
    real: -0, text: UNICODE, data: NON_UTF8, color: ttypes.Color.BLUE,
  });
  const allBytes = Buffer.from([...Array(256).keys()]);
  const everything = new ttypes.Everything({
    scalars: scalars,
    ints: [0, -1, I32_MAX, I32_MIN],
    tags: ["a", "b", UNICODE],
    counts: { x: I64_MAX, "": I64_MIN },
    nested: [{ 1: ["one"], "-2": [] }, {}],
    paths: { p: [point, new ttypes.Point({ x: 0, y: 0 })], empty: [] },
    shape: new ttypes.Shape({ label: UNICODE }),
    reals: [Infinity, -Infinity, NaN, 5e-324, 1.7976931348623157e308, -0],
    blobs: [Buffer.alloc(0), NON_UTF8, allBytes],
    palette: [[ttypes.Color.RED, ttypes.Color.GREEN], []],
  });
  const mib = Buffer.alloc(MIB);
  for (let i = 0; i < MIB; i++) mib[i] = i & 255;
  return [
    ["ping", "ping", []],
    ["bool", "echoBool", [false]],
    ["byte-min", "echoByte", [-128]],
    ["byte-max", "echoByte", [127]],
    ["i16-min", "echoI16", [-32768]],
    ["i32-min", "echoI32", [I32_MIN]],
    ["i32-max", "echoI32", [I32_MAX]],
    ["i64-min", "echoI64", [I64_MIN]],
    ["i64-max", "echoI64", [I64_MAX]],
    ["double-nan", "echoDouble", [NaN]],
    ["double-inf", "echoDouble", [Infinity]],
    ["double--inf", "echoDouble", [-Infinity]],
    ["double--0.0", "echoDouble", [-0]],
    ["double-max", "echoDouble", [1.7976931348623157e308]],
    ["double-denormal", "echoDouble", [5e-324]],
    ["string-unicode", "echoString", [UNICODE]],
    ["binary-non-utf8", "echoBinary", [NON_UTF8]],
    ["enum", "echoEnum", [ttypes.Color.BLUE]],
    ["scalars", "echoScalars", [scalars]],
    ["union-point", "echoUnion", [new ttypes.Shape({ point: point })]],
    ["union-code", "echoUnion", [new ttypes.Shape({ code: I64_MIN })]],
    ["everything", "echoEverything", [everything]],
    ["everything-empty", "echoEverything", [new ttypes.Everything()]],
    ["list", "echoList", [[I64_MAX, I64_MIN, new Int64(0)]]],
    ["set", "echoSet", [["x", UNICODE]]],
    ["map", "echoMap", [{ a: [1, 2], [UNICODE]: [] }]],
    ["fail-0", "fail", [0]],
    ["fail-1", "fail", [1]],
    ["fail-2", "fail", [2]],
    ["fail-3", "fail", [3]],
    ["binary-1mib", "echoBinary", [mib]],
    ["big-1mib", "big", [MIB]],
    ["sizeof-1mib", "sizeOf", [Buffer.alloc(MIB)]],
  ];
}

const DIALECTS = {
  "framed-binary": [thrift.TFramedTransport, thrift.TBinaryProtocol],
  "framed-compact": [thrift.TFramedTransport, thrift.TCompactProtocol],
  "buffered-binary": [thrift.TBufferedTransport, thrift.TBinaryProtocol],
  "buffered-compact": [thrift.TBufferedTransport, thrift.TCompactProtocol],
};

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function runTarget(label, host, port, dialect) {
  const [transport, protocol] = DIALECTS[dialect];
  const connection = thrift.createConnection(host, port, {
    transport: transport, protocol: protocol, max_attempts: 1, connect_timeout: 5000,
  });
  let failure = null;
  const failed = new Promise((_, reject) => {
    connection.on("error", (err) => { failure = err; reject(err); });
    connection.on("close", () => reject(failure || new Error("connection closed")));
  });
  failed.catch(() => {});
  const client = thrift.createClient(Interop, connection);
  try {
    for (const [name, method, args] of batch()) {
      let result;
      try {
        result = norm(await withTimeout(Promise.race([client[method](...args), failed]), 10000, name));
      } catch (err) {
        if (err === failure || (err && err.message === "connection closed") || /no answer/.test(err.message)) {
          throw err;
        }
        result = { raised: norm(err) };
      }
      process.stdout.write(`${label} ${name} ${JSON.stringify(result)}\n`);
    }
    const token = `js-${label}`;
    client.fire(token);
    let count = 0;
    for (let i = 0; i < 500 && count === 0; i++) {
      count = await withTimeout(Promise.race([client.fired(token), failed]), 10000, "fired");
      if (count === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    }
    process.stdout.write(`${label} oneway ${JSON.stringify(count > 0 ? 1 : 0)}\n`);
  } catch (err) {
    const what = String((err && err.message) || err).replace(/\n/g, " ");
    process.stdout.write(`${label} connection ERROR ${what}\n`);
  } finally {
    connection.end();
  }
}

async function main() {
  const targets = process.argv.slice(3);
  if (targets.length === 0 || targets.length % 4 !== 0) {
    process.stderr.write("usage: node js_client.js GEN_DIR LABEL HOST PORT DIALECT [...]\n");
    process.exit(2);
  }
  for (let i = 0; i < targets.length; i += 4) {
    await runTarget(targets[i], targets[i + 1], Number(targets[i + 2]), targets[i + 3]);
  }
  process.stdout.write("done\n");
  process.exit(0);
}

main();
