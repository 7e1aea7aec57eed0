"""The q2q_prior feature view over the backfill's output: one row per (query, product_id) per day.

The backfill writes <output>/dt=D/part-<run>.parquet with the feature columns, event_timestamp (D at
00:00 UTC: the features hold for searches on day D, computed from engagement before D) and
created_timestamp (the build's start). Q2Q_FEAST_SOURCE names the files (a DuckDB glob); the
default is the README's backfill output, ../../out/daily/, seen from this folder.
"""

import os
from datetime import timedelta

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get(
    "Q2Q_FEAST_SOURCE",
    os.path.normpath(os.path.join(HERE, "..", "..", "out", "daily")) + "/*/*.parquet",
)

query = Entity(name="query", join_keys=["query"], value_type=ValueType.STRING)
product = Entity(name="product_id", join_keys=["product_id"], value_type=ValueType.STRING)

backfill = FileSource(
    name="q2q_prior_backfill",
    path=SOURCE,
    # required by the DuckDB offline store (without it: 'NoneType' object has no attribute 'mutate')
    file_format=ParquetFormat(),
    timestamp_field="event_timestamp",
    created_timestamp_column="created_timestamp",
)

# One day: day D's build holds every pair with features on D, so a row older than a day is either
# superseded by D's (same values or new ones) or a pair D's build dropped, which must read as
# absent, not as its old value. A longer TTL keeps dropped pairs alive; see the README.
TTL = timedelta(days=1)

q2q_prior = FeatureView(
    name="q2q_prior",
    entities=[query, product],
    ttl=TTL,
    schema=[
        Field(name="h", dtype=Float64),
        Field(name="prior", dtype=Float64),
        Field(name="alpha", dtype=Float64),
        Field(name="f", dtype=Float64),
        Field(name="impressions", dtype=Int64),
        Field(name="n_neighbours", dtype=Int64),
        Field(name="n_contributing", dtype=Int64),
    ],
    source=backfill,
    online=True,
)
