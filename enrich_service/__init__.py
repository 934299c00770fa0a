"""Geospatial enrichment: tag city records with council district, neighborhood and zip."""

__version__ = "0.1.0"
