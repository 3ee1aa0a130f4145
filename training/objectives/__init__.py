"""What is optimised: one folder per objective, and the shared schedules, EMA, optimiser, multi-crop."""
