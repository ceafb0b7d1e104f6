"""Model-parallel building blocks of the trainer (expert parallelism); process groups live in
``trainer.distributed``."""
