"""``sockgate agent``: one long-running process that guards every socket a policy names.

Where ``sockgate run`` guards the sockets of the one service it starts, the agent learns of
sockets as they appear anywhere on the host (``watcher``), finds their holders, and puts the
service's filter on each (docs/agent.md). The pure modules (``model`` and the planners built on
it) import no system interface; the edge modules (``watcher`` …) are the only ones that do.
"""
