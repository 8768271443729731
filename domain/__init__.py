"""The rulebook of the carbon-ticket registry: aggregates, events, invariants and errors.

Pure: no I/O, no crypto, no framework besides the event-sourcing base classes.
"""
