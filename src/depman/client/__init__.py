"""The admin side of the `depman` command line: HTTP client, fleet files, tables."""
