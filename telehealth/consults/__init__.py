"""Video consultations (远程会诊): consults tied to cases, join tokens, TURN credentials, outcome.

Deliberately empty: `signaling/` imports `telehealth.consults.tokens` and must not pull in the
database through this package's `__init__`.
"""
