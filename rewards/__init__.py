"""Reward functions (TRL contract): `fn(prompts, completions, **columns) -> list[float | None]`.

Imports neither torch nor Ray at module level.
"""
