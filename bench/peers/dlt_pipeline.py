"""dlt's `rest_api` source into SQLite (dlt's sqlalchemy destination) on
the same API: cursor pagination on `next_page_token`, `items` as the data,
merged (upserted) on the primary key `id`.

    python dlt_pipeline.py BASE_URL DB WORKDIR [PAGE_SIZE]   prints {"rows": N, "db": FILE, "table": T}
"""

import json
import os
import sys

import dlt
from dlt.sources.rest_api import rest_api_source


def main():
    base, db, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
    page_size = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
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
    pipeline = dlt.pipeline(
        pipeline_name="sluice_bench",
        destination=dlt.destinations.sqlalchemy(credentials=f"sqlite:///{db}"),
        dataset_name="bench",
        pipelines_dir=workdir,
    )
    pipeline.run(source)
    with pipeline.sql_client() as client:
        rows = client.execute_sql("SELECT count(*) FROM items")[0][0]
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
