import experiments.schema  # noqa: F401  (registers the config schemas)
