"""Experiments: thin Hydra entry points over the `ntk` library (`python -m experiments.run +exp=<name>`).

Importing a module of this package imports only what that module needs: the config schemas of all
experiments are registered by the entry points that compose configs (`experiments.run`,
`experiments.schema.register_all`), not on import of the package.
"""
