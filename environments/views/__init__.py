"""Portal pages of environments and the image catalogue, on the shared generic pages."""
