"""The DINOv2 objective: DINO loss on the CLS token (softmax centring or Sinkhorn-Knopp), iBOT, KoLeo."""
