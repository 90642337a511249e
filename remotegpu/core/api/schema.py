"""OpenAPI schema additions: the one error shape, documented on every operation."""

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "fields"],
            "properties": {
                "code": {"type": "string", "example": "invalid"},
                "message": {"type": "string"},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    "description": "Messages per input field; empty for other errors.",
                },
            },
        }
    },
}

_DESCRIPTIONS = {
    "400": "Invalid input; `fields` says which and why.",
    "401": "Not authenticated, or the token is malformed, revoked or expired.",
    "403": "Not allowed: read-only token, wrong IP network, role or disabled organisation.",
    "404": "Not found, or not visible to the caller.",
    "409": "Conflicts with the object's current state.",
}
_WRITE_METHODS = {"post", "put", "patch", "delete"}


def add_error_responses(result, generator, request, public):
    """drf-spectacular post-processing hook: every operation documents its error responses."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            # Filters and pages can be invalid on reads too, and a page past the end is a 404.
            codes = ["400", "401", "403", "404"]
            if method in _WRITE_METHODS:
                codes.append("409")
            responses = operation.setdefault("responses", {})
            for code in codes:
                responses.setdefault(
                    code,
                    {
                        "description": _DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return result
