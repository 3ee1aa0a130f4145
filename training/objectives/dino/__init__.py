"""The DINO objective: its projection head, and the loss with its centring."""
