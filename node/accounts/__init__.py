"""Worklist accounts: users and roles, password hashing, failed-login back-off, browser sessions."""
