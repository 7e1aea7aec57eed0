"""Checks that two feature tables agree: python agree.py A.parquet B.parquet

Same (query, product_id) keys in the same order (both are written sorted), integer columns equal,
float columns equal to 1e-12 relative (summation order may differ in the last bits). Streams both
files in aligned windows, so memory stays bounded at any scale. Prints the largest relative
difference; exits 1 on disagreement."""
import sys
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

WINDOW = 1 << 20


def windows(path):
    """The file's rows in tables of exactly WINDOW rows (the last one shorter)."""
    pending, size = [], 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=WINDOW):
        pending.append(batch)
        size += batch.num_rows
        while size >= WINDOW:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, WINDOW)
            rest = table.slice(WINDOW)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending)


def compare(a, b, offset, worst):
    for key in ("query", "product_id"):
        x, y = (t.column(key).cast("string") for t in (a, b))
        if not x.equals(y):
            sys.exit(f"column {key} differs in rows {offset}..{offset + a.num_rows}")
    for name in ("h", "prior", "alpha", "f"):
        x, y = (t.column(name).cast("double") for t in (a, b))
        diff = pc.abs(pc.subtract(x, y))
        scale = pc.max_element_wise(pc.abs(x), pc.abs(y))
        rel = pc.if_else(pc.greater(scale, 0), pc.divide(diff, scale), 0.0)
        m = pc.max(rel).as_py() or 0.0
        worst = max(worst, m)
        if m > 1e-12:
            sys.exit(f"column {name} differs by {m:.3g} (relative) in rows {offset}..")
    for name in ("impressions", "n_neighbours", "n_contributing"):
        x, y = (t.column(name).cast("int64") for t in (a, b))
        if not x.equals(y):
            sys.exit(f"column {name} differs in rows {offset}..")
    return worst


rows_a, rows_b = (pq.ParquetFile(p).metadata.num_rows for p in sys.argv[1:3])
if rows_a != rows_b:
    sys.exit(f"row counts differ: {rows_a} vs {rows_b}")
worst, offset = 0.0, 0
for a, b in zip(windows(sys.argv[1]), windows(sys.argv[2])):
    if a.num_rows != b.num_rows:
        sys.exit("the files' windows are misaligned (a bug in agree.py)")
    worst = compare(a, b, offset, worst)
    offset += a.num_rows
print(f"agree: {offset} rows, largest relative difference {worst:.3g}")
