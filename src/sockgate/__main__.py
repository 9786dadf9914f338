from sockgate.cli.main import entry

entry()
