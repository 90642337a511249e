"""Business logic of the fleet: every write goes through a function here."""
