"""The foundation every other package stands on: errors and exit codes, atomic writes, bounded reads,
strict records, redaction, credentials and the run directory's paths.

May import: the standard library and third-party packages only, never another part of job/.
"""
