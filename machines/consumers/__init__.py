"""WebSocket consumers: the host agent's connection and the onboarding page's live progress."""
