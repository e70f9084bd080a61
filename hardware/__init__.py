"""Machine profiles, calibration, machine and batch selection, and shard planning."""
