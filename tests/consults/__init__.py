"""Consults: the service on both databases, the API on a real app."""
