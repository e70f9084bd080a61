"""The `realign` command line (main.py), the local Prefect stack (server.py) and `realign doctor` (doctor.py).

The only part of realign that may import prefect, great_expectations, flows, tasks, gates and hardware
(tests/test_purity.py); it does so lazily, inside the commands that need them.
"""

from realign.cli.main import app, main

__all__ = ["app", "main"]
