"""Per-example gradient engines. ``hooks``: Opacus' per-sample gradient hooks."""
