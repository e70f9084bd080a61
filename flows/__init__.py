"""One Prefect flow per workflow (dpo, srf, rlvr, antihallucination), plus curation and the shard worker."""
