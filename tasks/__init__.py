"""One module per workflow stage: a thin Prefect task that reads its inputs, calls realign, writes its outputs."""
