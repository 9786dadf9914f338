"""The guard proxy: what the kernel cannot decide, decided in user space, at line rate.

``sockgate proxy`` sits in front of an unmodified service. Its own listening sockets carry
the kernel filter for everything the source address decides (``resolve.kernelpart``), so denied
sources never wake it; it decides the rest — Unix peer credentials, host names, connection
limits and rate bans (``limits``, pushed back into the kernel filter) — per connection
(``service``), relays bytes with ``splice(2)`` (``relay``, ``udp``), logs every decision and
every finished connection (``log``), and reloads, drains and cooperates with systemd
(``server``). docs/proxy.md is the operator's guide.

Importing the package loads nothing: its pure parts (``limits``, ``admission``) are imported
by the core without any I/O module coming with them.
"""
