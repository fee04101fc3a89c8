"""Delivery: send the outbox's objects to the configured destinations by C-STORE, with retries."""
