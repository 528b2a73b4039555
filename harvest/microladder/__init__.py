"""The micro-ladder: tiny Llama models pretrained on CPU, harvested with the real harvest code.

corpus (synthetic language + task episodes) -> pretrain (log-spaced HF checkpoints) -> tasks
(harvest tasks over the episodes) -> run (pretrain all sizes, harvest, fit, backtest, report).
"""
