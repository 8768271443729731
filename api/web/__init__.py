"""The registry's pages for people: templates/, static/ and locale/ (message catalogs) beside
site.py, which serves them. The public explorer grows here."""
