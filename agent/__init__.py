"""The agent's project folder, not a package anyone imports: this file only makes pytest name the
agent's tests ``agent.tests.*``, so they never clash with the top-level ``tests`` package."""
