"""Business logic of accounts: every write goes through a function here."""
