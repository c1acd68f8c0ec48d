"""Composable data filters over batches: PII, safety, self-identification, dedup, decontamination.

Imports neither torch nor Ray at module level.
"""
