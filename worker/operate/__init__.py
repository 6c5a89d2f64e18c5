"""Operator commands' logic: replay, status, the dead-letter table."""
