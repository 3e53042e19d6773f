"""Pretraining's components, one concern each: loop (the step and the loop), checkpoint (the checkpoint manager:
when to save, what to resume, what to keep), metrics (the metric sinks), evaluation (losses and accuracies), data
(batches per rank and step), sources and loose_json (the samples read), precision (loss scaling, autocast), optim
(AdamW, LR schedule), distributed (process group, signals). None imports a stage."""
