// Micro-benchmark of the replica alone (no network): decode + apply
// 10,000 transactions of 100 inserted rows (~200-byte rows) from encoded
// OpLog frames, as the client does. Run after `npm run build`:
//   node bench/replica.bench.mjs
// It decodes OpLog as the client does (decodeInFrame: the generated ts-proto
// decoder); PB_ES=1 decodes with protobuf-es's fromBinary (decodeFrame) instead.
// The end-to-end benchmark against a real pgsat is issue 11's, not this one.
import { decodeFrame, frame, MessageType, Replica } from "../dist/index.js";
import { decodeInFrame } from "../dist/framing.js";

const PB_ES = process.env.PB_ES === "1";
const TXNS = Number(process.env.TXNS ?? 10_000);
const PER = 100;
const enc = new TextEncoder();
const rel = frame(MessageType.Relation, {
  relationId: 1, schema: "public", table: "items",
  columns: [
    { name: "id", typeOid: 20, typeName: "int8", primaryKey: true },
    { name: "owner", typeOid: 25, typeName: "text" },
    { name: "qty", typeOid: 23, typeName: "int4" },
    { name: "done", typeOid: 16, typeName: "bool" },
    { name: "note", typeOid: 25, typeName: "text" },
  ],
});
const note = "x".repeat(150);
const frames = [];
let id = 0;
for (let t = 0; t < TXNS; t++) {
  const lsn = BigInt(t + 1) * 1000n;
  const ops = [{ op: { case: "begin", value: { xid: t, commitLsn: lsn } } }];
  for (let i = 0; i < PER; i++) {
    id++;
    const values = [String(id), "user-" + (id % 100), String(id % 1000), id % 2 ? "t" : "f", note].map((s) => enc.encode(s));
    ops.push({ op: { case: "insert", value: { relationId: 1, row: { values } } } });
  }
  ops.push({ op: { case: "commit", value: { lsn } } });
  frames.push(frame(MessageType.OpLog, { ops }));
}
const r = new Replica();
const relFrame = decodeFrame(rel);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
r.onRelation(relFrame.msg);
let applied = 0;
let decodeMs = 0;
for (const f of frames) {
  const t = performance.now();
  const d = PB_ES ? decodeFrame(f) : decodeInFrame(f);
  decodeMs += performance.now() - t;
  applied += r.onOpLog(d.msg).length;
}
const secs = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuSecs = (cpu.user + cpu.system) / 1e6;
const rows = TXNS * PER;
console.log(
  `replica: ${rows} rows in ${applied} txns, ${secs.toFixed(2)} s, ${Math.round(rows / secs)} rows/s ` +
    `(protobuf decode ${(decodeMs / 1000).toFixed(2)} s, apply ${(secs - decodeMs / 1000).toFixed(2)} s); ` +
    `CPU ${cpuSecs.toFixed(2)} s, ${Math.round(rows / cpuSecs)} rows per CPU-second`,
);
