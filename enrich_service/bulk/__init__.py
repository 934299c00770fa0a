"""Bulk operations, each declared once as decode -> run -> encode (operation.py); api/factory.py turns each into
its POST route, OpenAPI request bodies and NDJSON stream."""
