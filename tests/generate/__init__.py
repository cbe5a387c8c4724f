"""Generators of the files that are made from the code: docs reference blocks, the chart's README and
the `config` part of its values.schema.json. Developer tools, not runtime code: `python -m tests.generate`
rewrites them all, and tests fail while any is stale.
"""
