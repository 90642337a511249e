"""Payment providers: the interface a card processor implements (``base``) and the sandbox."""
