"""Pretraining's components, one concern each: precision (loss scaling, autocast), optim (AdamW, LR schedule)."""
