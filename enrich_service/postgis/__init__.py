"""PostGIS publishing: connections that cannot hang (`connect`), the one stage-COPY-swap helper (`publish`), and
the boundary layers' tables (`layers`)."""

from .connect import PublishTimeout, backend_of, connect, deadline, explain, set_local_timeouts, terminate
from .layers import load_layers, table_name

__all__ = ["PublishTimeout", "backend_of", "connect", "deadline", "explain", "load_layers", "set_local_timeouts",
           "table_name", "terminate"]
