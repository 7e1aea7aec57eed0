"""A second data shape for the benchmarks, independent of `q2q-prior synth`.

    zipf_shape.py QUERIES OUT_DIR [--seed N]

synth is one marketplace (short product ids, a fixed tail share, neighbours drawn from its own
topic model). This one differs on every axis the engine's speed depends on:

- products per query are Zipf(1.8), capped at 1,000: a few head queries have hundreds of
  products, most have 1-5;
- product ids are 20-byte SKUs (longer than the 12 bytes an Arrow string view holds inline), drawn
  Zipf over a catalogue of QUERIES/2 products, so head products appear under many queries;
- query strings are 2-7 words from a 5,000-word vocabulary (5-60 bytes);
- each query gets 15 neighbour rows, uniform over the queries but 1% to the ten biggest (a head
  query is everyone's neighbour: the skew docs/DISTRIBUTED.md talks about), 10% of them without
  history, scores uniform in [0, 1), some (query, neighbour) pairs repeated.

Writes engagement.parquet (query, product_id, impressions, clicks, adds, purchases) and
neighbours.parquet (query, neighbour, score), as synth does.
"""

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("queries", type=int)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    n = args.queries
    os.makedirs(args.out, exist_ok=True)

    vocabulary = np.array(
        ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(3, 9)))
         for _ in range(5000)]
    )
    words = rng.integers(2, 8, size=n)
    queries = []
    seen = set()
    i = 0
    while len(queries) < n:
        q = " ".join(vocabulary[rng.integers(0, len(vocabulary), size=words[i % n])])
        i += 1
        if q not in seen:
            seen.add(q)
            queries.append(q)
    queries = np.array(queries, dtype=object)

    # products per query: Zipf, capped; the head queries first in popularity order
    per_query = np.minimum(rng.zipf(1.8, size=n), 1000)
    catalogue = max(n // 2, 1)
    skus = np.array([f"sku-{v:016x}" for v in rng.integers(0, 2**63, size=catalogue)], dtype=object)
    total = int(per_query.sum())
    query_of_row = np.repeat(np.arange(n), per_query)
    product_of_row = np.minimum(rng.zipf(1.3, size=total) - 1, catalogue - 1)
    # one row per (query, product)
    keys = np.unique(query_of_row.astype(np.int64) * catalogue + product_of_row)
    query_of_row = keys // catalogue
    product_of_row = keys % catalogue
    rows = len(keys)
    impressions = rng.integers(1, 200, size=rows)
    clicks = rng.binomial(impressions, 0.08)
    adds = rng.binomial(clicks, 0.3)
    purchases = rng.binomial(adds, 0.4)
    engagement = pa.table(
        {
            "query": pa.array(queries[query_of_row], pa.string()),
            "product_id": pa.array(skus[product_of_row], pa.string()),
            "impressions": pa.array(impressions, pa.int64()),
            "clicks": pa.array(clicks, pa.int64()),
            "adds": pa.array(adds, pa.int64()),
            "purchases": pa.array(purchases, pa.int64()),
        }
    )
    pq.write_table(engagement, os.path.join(args.out, "engagement.parquet"), row_group_size=1 << 20)

    # neighbours: 15 per query, uniform but for 1% that go to the ten biggest queries (everyone's
    # neighbour); 10% without history
    k = 15
    source = np.repeat(np.arange(n), k)
    target = rng.integers(0, n, size=n * k)
    head = np.argsort(-per_query)[:10]
    to_head = rng.random(n * k) < 0.01
    target[to_head] = rng.choice(head, size=int(to_head.sum()))
    no_history = rng.random(n * k) < 0.1
    names = queries[target].copy()
    names[no_history] = np.array([f"unseen {j}" for j in range(int(no_history.sum()))], dtype=object)
    scores = rng.random(n * k)
    neighbours = pa.table(
        {
            "query": pa.array(queries[source], pa.string()),
            "neighbour": pa.array(names, pa.string()),
            "score": pa.array(scores, pa.float64()),
        }
    )
    pq.write_table(neighbours, os.path.join(args.out, "neighbours.parquet"), row_group_size=1 << 20)
    print(f"{n} queries, {rows} engagement rows, {n * k} neighbour rows -> {args.out}")


if __name__ == "__main__":
    main()
