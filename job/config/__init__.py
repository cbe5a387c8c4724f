"""What a run is asked to do: the typed config and its strict YAML loader, the named recipes, and
experiment specs (a base config and the trials it expands to).

May import: job.core.
"""
