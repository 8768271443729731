"""Every way in: the command line, the HTTP server and its Python client."""
