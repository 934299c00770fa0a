"""Bodies in and answers out, per media type: negotiation (formats.py), one decoder and one encoder per format,
shared by every bulk operation. Input columns pass through untouched.

Kept light on purpose: the client imports io.arrow_stream without the engine, so nothing is imported here.
"""
