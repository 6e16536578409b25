"""Test and benchmark support: real node processes on loopback (never mocks)."""
