"""Forms of the operator pages, one module per subject (as ``views/``)."""
