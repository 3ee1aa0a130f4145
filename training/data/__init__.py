"""Training data: image and band datasets, the sampler, multi-crop on PIL workers or on the device."""
