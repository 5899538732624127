"""The trainer dashboard: a read-only view of one store in the browser (and as JSON at ``/api/status``).

``status.py`` computes every number once (the page and the JSON show the same dict), ``concept_svg.py`` lays
out the concept graph for the coverage drawing, ``thumbnails.py`` renders stored slices as windowed 8-bit
PNG thumbnails, ``server.py`` serves it all with the standard library's ``http.server`` and jinja2
templates. The store is opened read-only (``readonly.py``): the dashboard never writes to it.
"""

from trainer.dashboard.readonly import DashboardError, open_read_only

__all__ = ["DashboardError", "open_read_only"]
