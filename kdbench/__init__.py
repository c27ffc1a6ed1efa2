"""kdbench: a reproducible benchmark suite for knowledge distillation (Hinton, Vinyals & Dean 2015)."""
__version__ = "0.1.0"
