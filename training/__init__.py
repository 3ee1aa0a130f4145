"""The self-distillation trainer (``dinofeat-train``), installed as ``dinofeat.training``."""
