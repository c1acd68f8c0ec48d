"""Untrusted code execution: bubblewrap namespaces + rlimits + wall-clock timeouts, and a pool.

Imports neither torch nor Ray at module level.
"""
