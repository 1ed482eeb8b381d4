"""Config snippets shared by the config tests."""

ACCOUNT = """
[[accounts]]
name = "personal"
host = "pop.example.org"
username = "alice@example.org"
password_env = "PERSONAL_PASSWORD"
"""
