"""Runs benches/compare/duckdb_feature_job.sql once: python duckdb_run.py SQL ENGAGEMENT NEIGHBOURS OUTPUT TOP_K

DuckDB uses every core and its default memory limit, as a user would run it."""
import sys
import duckdb

sql_file, engagement, neighbours, output, top_k = sys.argv[1:6]
sql = open(sql_file).read().format(
    engagement=engagement, neighbours=neighbours, output=output, top_k=int(top_k)
)
con = duckdb.connect()
con.execute(sql)
con.close()
