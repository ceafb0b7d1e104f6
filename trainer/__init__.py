"""The shared dense/MoE trainer.

Knows nothing of Ray or MLflow: it takes a RunConfig and a ``report(step, metrics)`` callback.
"""
