"""The web dashboard, served at ``/`` by the API process: server-rendered pages over the REST API.

Jinja2 templates (autoescaped) and htmx for the live parts, both shipped in this package
(``static/``, htmx with its licence): nothing is fetched from a CDN, so it works on an
air-gapped site. Every read and action goes through the REST routes in-process with the
session's token (``inproc``), so the dashboard shows and does exactly what the API allows.
"""

from control.web.dashboard.views import Dashboard, build_dashboard

HTMX_VERSION = "2.0.11"  # static/htmx.min.js, from the npm registry: npm pack htmx.org@2.0.11

__all__ = ["HTMX_VERSION", "Dashboard", "build_dashboard"]
