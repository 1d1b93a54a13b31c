"""The HTTP resources. Each module declares its routes on import; this order is the OpenAPI
document's order. Routes parse the request, check access through ``control.registry.access``
and call a service in ``control.registry`` or ``control.farm``."""

# isort: off
from control.web.routes import health
from control.web import openapi
from control.web.routes import tokens, users, groups, spaces, providers, support, changes
from control.web.routes import nodes, tasks, inventory

RESOURCES = (health, openapi, tokens, users, groups, spaces, providers, support, changes, nodes, tasks, inventory)
from control.web.routes import queues, roottoken  # noqa: E402,F401  (the dashboard's extra routes)
from control.web.routes import audit  # noqa: E402,F401
