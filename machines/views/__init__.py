"""Operator pages of the fleet, one module per subject. Staff only; anyone else gets a 404, as
if they did not exist. Thin: forms in, services called, templates out."""
