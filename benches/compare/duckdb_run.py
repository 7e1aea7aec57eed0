"""Runs benches/compare/duckdb_feature_job.sql once: python duckdb_run.py SQL ENGAGEMENT NEIGHBOURS OUTPUT TOP_K [SETTING ...]

DuckDB uses every core and its default memory limit, as a user would run it. Each SETTING
(`name=value`, e.g. `preserve_insertion_order=false`) is applied with SET first: the tuning DuckDB's
own out-of-memory message recommends."""
import sys
import duckdb

sql_file, engagement, neighbours, output, top_k = sys.argv[1:6]
settings = sys.argv[6:]
sql = open(sql_file).read().format(
    engagement=engagement, neighbours=neighbours, output=output, top_k=int(top_k)
)
con = duckdb.connect()
for setting in settings:
    name, value = setting.split("=", 1)
    con.execute(f"SET {name} = '{value}'")
con.execute(sql)
con.close()
