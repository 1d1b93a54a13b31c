"""The HTTP resources. Each module declares its routes on import; this order is the OpenAPI
document's order. Routes parse the request, check access through ``control.registry.access``
and call a service in ``control.registry`` or ``control.farm``."""

# isort: off
from control.web.routes import health
from control.web import openapi
from control.web.routes import tokens, roottoken, users, groups, spaces, providers, support, invites, changes
from control.web.routes import nodes, tasks, batch, grants, queues, inventory, audit, templates, schedules, webhooks
from control.web.routes import taskfiles, transfers

RESOURCES = (health, openapi, tokens, roottoken, users, groups, spaces, providers, support, invites, changes,
             nodes, tasks, batch, grants, queues, inventory, audit, templates, schedules, webhooks, taskfiles,
             transfers)
