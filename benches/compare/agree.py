"""Checks that two feature tables agree: python agree.py A.parquet B.parquet

Same (query, product_id) keys in the same order (both are written sorted), integer columns equal,
float columns equal to 1e-12 relative (summation order may differ in the last bits). Prints the
largest relative difference; exits 1 on disagreement."""
import sys
import pyarrow.compute as pc
import pyarrow.parquet as pq

a, b = (pq.read_table(p) for p in sys.argv[1:3])
if a.num_rows != b.num_rows:
    sys.exit(f"row counts differ: {a.num_rows} vs {b.num_rows}")
for key in ("query", "product_id"):
    x, y = (t.column(key).cast("string") for t in (a, b))
    if not x.equals(y):
        sys.exit(f"column {key} differs")
worst = 0.0
for name in ("h", "prior", "alpha", "f"):
    x, y = (t.column(name).cast("double") for t in (a, b))
    diff = pc.abs(pc.subtract(x, y))
    scale = pc.max_element_wise(pc.abs(x), pc.abs(y))
    rel = pc.if_else(pc.greater(scale, 0), pc.divide(diff, scale), 0.0)
    m = pc.max(rel).as_py() or 0.0
    worst = max(worst, m)
    if m > 1e-12:
        sys.exit(f"column {name} differs by {m:.3g} (relative)")
for name in ("impressions", "n_neighbours", "n_contributing"):
    x, y = (t.column(name).cast("int64") for t in (a, b))
    if not x.equals(y):
        sys.exit(f"column {name} differs")
print(f"agree: {a.num_rows} rows, largest relative difference {worst:.3g}")
