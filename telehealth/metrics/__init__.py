"""Consortium metrics: volumes, turnaround, deadline compliance, critical results, reader load."""
