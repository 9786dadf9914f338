"""The policy core: the native language (``lexer`` → ``parser``) and hosts_access files
(``hostsaccess``) become one typed ``ir.Policy``; ``lint`` and ``printer`` read it back.

Pure: no module here opens a file or a socket. Files arrive through an injected reader
(``sockgate.loading`` is the edge that reads them), accounts through ``accounts.Accounts``.
"""
