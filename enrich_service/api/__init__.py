"""Thin routers: parse the request, call the engine or geocoder, encode the answer."""
