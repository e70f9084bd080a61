"""The process's Great Expectations context (ephemeral: gates keep their own reports on disk)."""

from __future__ import annotations

import logging
import os

# No usage-statistics calls home: realign runs offline and on private machines.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

SOURCE = "realign_frames"
_CONTEXT = None


def gx_context():
    """One ephemeral GX context per process, with progress bars off (they would flood task logs).

    GX needs an active context even to build a suite, so suite builders call this too.
    """
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        _CONTEXT = gx.get_context(mode="ephemeral")
        _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT.data_sources.add_pandas(SOURCE)
    return _CONTEXT
