"""Great Expectations suites, one per stage output, and the HIGH / MEDIUM / REJECT tier logic."""
