"""The DINOv3 objective's own pieces: Gram anchoring, its teacher's resize and refresh, the DINOv3 head,
distributed KoLeo, the "v2" schedules and the loss combination with the local-loss reweighting."""
