"""Every way in: the command line now, HTTP next."""
