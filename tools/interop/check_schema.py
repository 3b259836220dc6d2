#!/usr/bin/env python3
"""Check a MuST record file against SCHEMA.md with the tools other people will read it with.

    check_schema.py FILE.parquet EXPECTED.json

EXPECTED.json is {"kind": "image" | "error", "records": [...]}, the records serialised by the Rust
`schemas` crate with serde (ImageRecord / ErrorRecord, float values before quantisation). The script
checks, with pyarrow, that every documented column exists with its documented Arrow type and
nullability, that the schema version and record kind are in the footer and the Arrow schema metadata,
and that decoding the quantised columns as SCHEMA.md says gives back the expected values; then, with
duckdb, that the file reads and decodes the same way in SQL. Exit status 0 when everything matches.
"""

import json
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
PROB_ATOL = 1e-5  # q / 65535 is within 0.5 / 65535 = 7.7e-6 of the written probability
DEPTH_RTOL = 1e-3  # of the map's range (max - min)


def item(t):
    return pa.list_(pa.field("item", t, nullable=False))


BOX = pa.struct([pa.field(n, pa.float32(), nullable=False) for n in ("x0", "y0", "x1", "y1")]
                + [pa.field("class_id", pa.uint16(), nullable=False),
                   pa.field("score", pa.float32(), nullable=False)])

IMAGE_COLUMNS = {
    "key": (pa.string(), False),
    "dataset": (pa.string(), False),
    "source_uri": (pa.string(), False),
    "width": (pa.uint32(), False),
    "height": (pa.uint32(), False),
    "image_format": (pa.string(), True),
    "image": (pa.binary(), True),
    "cls_origin": (pa.string(), False),
    "cls_teacher": (pa.string(), True),
    "cls_probs": (item(pa.uint16()), True),
    "det_origin": (pa.string(), False),
    "det_teacher": (pa.string(), True),
    "det_boxes": (item(BOX), True),
    "seg_origin": (pa.string(), False),
    "seg_teacher": (pa.string(), True),
    "seg_height": (pa.uint16(), True),
    "seg_width": (pa.uint16(), True),
    "seg_mask": (item(pa.uint8()), True),
    "depth_origin": (pa.string(), False),
    "depth_teacher": (pa.string(), True),
    "depth_kind": (pa.string(), True),
    "depth_height": (pa.uint16(), True),
    "depth_width": (pa.uint16(), True),
    "depth_offset": (pa.float32(), True),
    "depth_scale": (pa.float32(), True),
    "depth_q": (item(pa.uint16()), True),
}

ERROR_COLUMNS = {name: (pa.string(), False)
                 for name in ("key", "dataset", "source_uri", "stage", "reason", "detail")}

STAGES = {"list", "fetch", "decode", "preprocess", "inference", "postprocess", "supervised_label", "write"}
TASKS = ("cls", "det", "seg", "depth")

# What duckdb must make of the list and struct columns.
DUCKDB_TYPES = {
    "cls_probs": "USMALLINT[]",
    "det_boxes": "STRUCT(x0 FLOAT, y0 FLOAT, x1 FLOAT, y1 FLOAT, class_id USMALLINT, score FLOAT)[]",
    "seg_mask": "UTINYINT[]",
    "depth_q": "USMALLINT[]",
    "width": "UINTEGER",
    "image": "BLOB",
}


class Checker:
    def __init__(self):
        self.failures = []
        self.checks = 0

    def expect(self, ok, what):
        self.checks += 1
        if not ok:
            self.failures.append(what)

    def equal(self, got, want, what):
        self.expect(got == want, f"{what}: got {got!r}, expected {want!r}")


def same_type(want, got):
    """Type equality that also compares list element nullability and struct field names."""
    if pa.types.is_list(want):
        return (pa.types.is_list(got) and want.value_field.nullable == got.value_field.nullable
                and same_type(want.value_type, got.value_type))
    if pa.types.is_struct(want):
        return (pa.types.is_struct(got) and want.num_fields == got.num_fields
                and all(want.field(i).name == got.field(i).name
                        and want.field(i).nullable == got.field(i).nullable
                        and same_type(want.field(i).type, got.field(i).type)
                        for i in range(want.num_fields)))
    return want.equals(got)


def check_schema(c, path, kind, columns):
    footer = pq.ParquetFile(path).metadata.metadata or {}
    c.equal(footer.get(b"must.schema_version"), SCHEMA_VERSION.encode(), "footer must.schema_version")
    c.equal(footer.get(b"must.record_kind"), kind.encode(), "footer must.record_kind")
    schema = pq.read_schema(path)
    meta = schema.metadata or {}
    c.equal(meta.get(b"must.schema_version"), SCHEMA_VERSION.encode(), "Arrow schema must.schema_version")
    c.equal(meta.get(b"must.record_kind"), kind.encode(), "Arrow schema must.record_kind")
    c.equal(sorted(schema.names), sorted(columns), "column names")
    for name, (want, nullable) in columns.items():
        if name not in schema.names:
            continue
        field = schema.field(name)
        c.expect(same_type(want, field.type), f"column {name}: type {field.type}, expected {want}")
        c.equal(field.nullable, nullable, f"column {name} nullable")


def decode_probs(row):
    return np.asarray(row["cls_probs"], dtype=np.float64) / 65535


def decode_depth(row):
    q = np.asarray(row["depth_q"], dtype=np.float64)
    h, w = row["depth_height"], row["depth_width"]
    return (row["depth_offset"] + row["depth_scale"] * q).reshape(h, w)


def check_provenance(c, row, task, label, where):
    origin = row[f"{task}_origin"]
    teacher = row[f"{task}_teacher"]
    if label is None:
        c.equal((origin, teacher), ("absent", None), f"{where} {task} origin/teacher")
        return
    source = label["source"]
    c.equal(origin, source["origin"], f"{where} {task}_origin")
    c.equal(teacher, source.get("teacher"), f"{where} {task}_teacher")


def check_image_row(c, row, want, where):
    for name in ("key", "dataset", "source_uri", "width", "height", "image_format"):
        c.equal(row[name], want[name], f"{where} {name}")
    c.equal(row["image"], None if want["image"] is None else bytes(want["image"]), f"{where} image")
    for task in TASKS:
        check_provenance(c, row, task, want[task], where)

    cls = want["cls"]
    if cls is None:
        c.equal(row["cls_probs"], None, f"{where} cls_probs")
    else:
        got = decode_probs(row)
        exp = np.asarray(cls["probs"], dtype=np.float64)
        c.equal(got.shape, exp.shape, f"{where} cls_probs length")
        if got.shape == exp.shape:
            err = float(np.max(np.abs(got - exp))) if exp.size else 0.0
            c.expect(err <= PROB_ATOL, f"{where} cls_probs: max error {err:.3g} > {PROB_ATOL}")

    det = want["det"]
    if det is None:
        c.equal(row["det_boxes"], None, f"{where} det_boxes")
    else:
        got = row["det_boxes"]
        c.equal(len(got), len(det["boxes"]), f"{where} number of boxes")
        for i, (g, e) in enumerate(zip(got, det["boxes"])):
            for f in ("x0", "y0", "x1", "y1", "score"):
                c.equal(np.float32(g[f]), np.float32(e[f]), f"{where} box {i} {f}")
            c.equal(g["class_id"], e["class_id"], f"{where} box {i} class_id")

    seg = want["seg"]
    if seg is None:
        for name in ("seg_height", "seg_width", "seg_mask"):
            c.equal(row[name], None, f"{where} {name}")
    else:
        c.equal((row["seg_height"], row["seg_width"]), (seg["height"], seg["width"]), f"{where} seg size")
        mask = np.asarray(row["seg_mask"], dtype=np.uint8)
        exp = np.asarray(seg["mask"], dtype=np.uint8)
        c.expect(mask.shape == exp.shape and np.array_equal(mask, exp), f"{where} seg_mask differs")
        if mask.size == seg["height"] * seg["width"]:
            mask.reshape(row["seg_height"], row["seg_width"])  # the documented decoding must work

    depth = want["depth"]
    if depth is None:
        for name in ("depth_kind", "depth_height", "depth_width", "depth_offset", "depth_scale", "depth_q"):
            c.equal(row[name], None, f"{where} {name}")
    else:
        c.equal(row["depth_kind"], depth["kind"], f"{where} depth_kind")
        c.equal((row["depth_height"], row["depth_width"]), (depth["height"], depth["width"]), f"{where} depth size")
        exp = np.asarray(depth["values"], dtype=np.float64).reshape(depth["height"], depth["width"])
        got = decode_depth(row)
        span = float(exp.max() - exp.min())
        tol = DEPTH_RTOL * span + 1e-6 * float(np.abs(exp).max())
        err = float(np.max(np.abs(got - exp)))
        c.expect(err <= tol, f"{where} depth: max error {err:.3g} > {tol:.3g} (range {span:.3g})")


def check_image_duckdb(c, con, path, records):
    types = {name: typ for name, typ, *_ in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()}
    for name, want in DUCKDB_TYPES.items():
        c.equal(types.get(name), want, f"duckdb type of {name}")
    rows = con.execute(
        """
        SELECT key,
               list_transform(cls_probs, q -> q / 65535.0) AS probs,
               len(seg_mask) AS mask_len,
               list_transform(depth_q, q -> depth_offset + depth_scale * q) AS depth,
               len(det_boxes) AS boxes
        FROM read_parquet(?)
        """,
        [path],
    ).fetchall()
    c.equal(len(rows), len(records), "duckdb row count")
    for (key, probs, mask_len, depth, boxes), want in zip(rows, records):
        where = f"duckdb {key!r}:"
        c.equal(key, want["key"], f"{where} key")
        if want["cls"] is None:
            c.equal(probs, None, f"{where} probs")
        else:
            err = float(np.max(np.abs(np.asarray(probs) - np.asarray(want["cls"]["probs"]))))
            c.expect(err <= PROB_ATOL, f"{where} probs error {err:.3g}")
        c.equal(mask_len, None if want["seg"] is None else len(want["seg"]["mask"]), f"{where} mask length")
        c.equal(boxes, None if want["det"] is None else len(want["det"]["boxes"]), f"{where} boxes")
        if want["depth"] is None:
            c.equal(depth, None, f"{where} depth")
        else:
            exp = np.asarray(want["depth"]["values"], dtype=np.float64)
            span = float(exp.max() - exp.min())
            err = float(np.max(np.abs(np.asarray(depth) - exp)))
            c.expect(err <= DEPTH_RTOL * span + 1e-6 * float(np.abs(exp).max()), f"{where} depth error {err:.3g}")


def check_footer_duckdb(c, con, path, kind):
    kv = {k: v for k, v in con.execute("SELECT key, value FROM parquet_kv_metadata(?)", [path]).fetchall()}
    c.equal(kv.get(b"must.schema_version"), SCHEMA_VERSION.encode(), "duckdb footer must.schema_version")
    c.equal(kv.get(b"must.record_kind"), kind.encode(), "duckdb footer must.record_kind")


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, expected_path = argv[1], argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    kind, records = expected["kind"], expected["records"]
    c = Checker()
    columns = IMAGE_COLUMNS if kind == "image" else ERROR_COLUMNS

    check_schema(c, path, kind, columns)
    table = pq.read_table(path)
    rows = table.to_pylist()
    c.equal(len(rows), len(records), "row count")
    for i, (row, want) in enumerate(zip(rows, records)):
        where = f"row {i} ({want['key']!r}):"
        if kind == "image":
            check_image_row(c, row, want, where)
        else:
            for name in ERROR_COLUMNS:
                c.equal(row[name], want[name], f"{where} {name}")
            c.expect(row["stage"] in STAGES, f"{where} stage {row['stage']!r} is not a documented stage")

    con = duckdb.connect()
    check_footer_duckdb(c, con, path, kind)
    if kind == "image":
        check_image_duckdb(c, con, path, records)
    else:
        n = con.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()[0]
        c.equal(n, len(records), "duckdb row count")

    print(f"{path}: {kind} records, {len(rows)} rows, {len(table.schema)} columns, "
          f"{c.checks} checks with pyarrow {pa.__version__}, duckdb {duckdb.__version__}")
    for failure in c.failures:
        print(f"FAIL {failure}")
    if c.failures:
        print(f"{len(c.failures)} of {c.checks} checks failed")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
