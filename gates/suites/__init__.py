"""Great Expectations suites, one function per stage output (`<dataset>_suite(thresholds) -> ExpectationSuite`).

expectations.py holds what they are built from; shared.py the suites of stages 1, 6 and 7; one module per
workflow for its stages 2-5. Flows pass suite functions to the gate; only `realign gate check` maps names
to suites (gates/cli.py), because that is where users type them.
"""
