"""The registry as an event-sourced application: commands, storage, projections."""
