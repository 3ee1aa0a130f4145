"""DINO self-distillation training, installed as ``dinofeat.training``."""
