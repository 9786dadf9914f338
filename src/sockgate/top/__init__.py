"""``sockgate top``: a live view of sockets, refusals, bans and the agent's health.

``model`` and ``select`` are pure (snapshots in, rows out; filter, sort, follow, explain),
``feed`` reads the host and talks to the agent, ``app`` is the textual application over them.
"""
