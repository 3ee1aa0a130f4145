"""The engine: step, loop, checkpoints and resume, FSDP, preemption, metrics, export, distillation."""
