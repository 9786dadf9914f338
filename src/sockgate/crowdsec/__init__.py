"""The CrowdSec bouncer: the decision stream as pure state (``stream``, ``session``) and its
HTTP edge (``lapi``), which the agent hosts. Nothing is imported here, so the pure parts load
without the edge."""
