"""Reliability suites that print figures: chaos (random faults on every connection) and kills
(SIGKILL at chosen moments, then resume). Both run the real CLI as a subprocess against real
SeaweedFS through the fault proxy on 127.0.0.1.

    python -m tests.chaos.chaos --uploads 200 --seed 1     # or: make chaos
    python -m tests.chaos.kills --kills 50 --seed 1

tests/integration/test_chaos_reduced.py runs a reduced count of both inside the test command.
"""
