"""Reading cases: requests, routing to reading groups, the claimable queue, deadlines.

The service lives in `telehealth.cases.service`; this package file imports nothing so the
archive's study scope check can import the cases' scope helper without a cycle.
"""
