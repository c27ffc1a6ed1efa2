"""The training engine, which knows no paper section: batched models, KD losses (the variant registry), the
optimiser, what students learn from (teachers), the training loop and evaluation."""
