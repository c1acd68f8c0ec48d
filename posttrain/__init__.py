"""posttrain: the Gemma 3 post-training recipe (sampled-logit distillation, WARM, J-BOND inside WARP)."""

__version__ = "0.1.0"
