"""Webhooks: task, node and schedule events POSTed, signed, to URLs users choose.

``models`` (the webhooks and their durable outbox of deliveries), ``events`` (what an event
is and who receives it: rows enqueued in the transaction of the change they announce),
``service`` (create, update, delete, test) and ``delivery`` (the sender thread: claims due
deliveries, checks where they go, signs, posts, retries with backoff). docs/webhooks.md.
"""
