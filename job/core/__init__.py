"""The foundation every other package stands on: errors and exit codes, atomic writes, bounded reads,
strict records, redaction, credentials, the run directory's paths and whole TensorBoard event files.

May import: the standard library and third-party packages only, never another part of job/.
"""
