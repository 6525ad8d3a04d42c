"""dlt's `rest_api` source into SQLite (dlt's sqlalchemy destination) or
PostgreSQL (dlt's postgres destination, psycopg2) on the same API: cursor
pagination on `next_page_token`, `items` as the data, merged (upserted) on
the primary key `id`.

    python dlt_pipeline.py BASE_URL DB WORKDIR [PAGE_SIZE [DATASET]]   prints {"rows": N}

DB is a SQLite file, or a postgresql://USER:PASSWORD@HOST:PORT/DB URL (the
benchmark's cluster trusts 127.0.0.1, so any password does); DATASET
(default `bench`) is the SQLite file's suffix or the Postgres schema.
"""

import json
import os
import sys

import dlt
from dlt.sources.rest_api import rest_api_source


def main():
    base, db, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
    page_size = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    dataset = sys.argv[5] if len(sys.argv) > 5 else "bench"
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    source = rest_api_source(
        {
            "client": {
                "base_url": base.rstrip("/") + "/",
                "paginator": {
                    "type": "cursor",
                    "cursor_path": "next_page_token",
                    "cursor_param": "page_token",
                },
            },
            "resources": [
                {
                    "name": "items",
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": "v1/items",
                        "params": {"limit": page_size},
                        "data_selector": "items",
                    },
                }
            ],
        }
    )
    if db.startswith(("postgresql://", "postgres://")):
        destination = dlt.destinations.postgres(credentials=db)
    else:
        destination = dlt.destinations.sqlalchemy(credentials=f"sqlite:///{db}")
    pipeline = dlt.pipeline(
        pipeline_name="sluice_bench",
        destination=destination,
        dataset_name=dataset,
        pipelines_dir=workdir,
    )
    pipeline.run(source)
    with pipeline.sql_client() as client:
        table = client.make_qualified_table_name("items")
        rows = client.execute_sql(f"SELECT count(*) FROM {table}")[0][0]
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
