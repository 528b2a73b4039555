"""The micro-ladder: tiny Llama models pretrained on CPU, harvested with the real harvest code.

corpus (synthetic language + task episodes) -> pretrain (log-spaced HF checkpoints) -> tasks
(harvest tasks over the episodes) -> run (pretrain all sizes, harvest, fit, backtest, report).
"""

# The micro-ladder's tasks, for the harvest task registry (harvest.tasks.TASK_CLASSES): names to
# "module:Class", imported only when one is built.
TASK_CLASSES = {name: f"harvest.microladder.tasks:{cls}" for name, cls in (
    ("ml_copy", "Copy"), ("ml_recall", "Recall"), ("ml_arith", "Arith"), ("ml_reverse", "Reverse"),
    ("ml_topic", "Topic"), ("ml_topic_short", "TopicShort"),
)}
