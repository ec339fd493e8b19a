"""Prefect set-up for hitchhiker: the `cpu` and `gpu` process work pools and the DuckDB writer limit. Idempotent."""
from __future__ import annotations

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.workers.process import ProcessWorker

from flows.slots import ensure_store_limit

POOLS = {
    "cpu": "ingest, states, rollouts on CPU, rewards, evaluation",
    "gpu": "training (and vLLM rollouts); start its worker on a GPU machine",
}


def setup() -> list[str]:
    """Create the work pools that deployments/prefect.yaml names (kept if present) and the store limit."""
    template = ProcessWorker.get_default_base_job_template()
    made = []
    with get_client(sync_client=True) as client:
        for name, description in POOLS.items():
            try:
                client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", base_job_template=template, description=description)
                )
                made.append(f"work pool {name} (process): created")
            except ObjectAlreadyExists:
                made.append(f"work pool {name}: already there")
    ensure_store_limit()
    made.append("global concurrency limit hitchhiker-duckdb-writer = 1")
    return made


if __name__ == "__main__":
    print("\n".join(setup()))
