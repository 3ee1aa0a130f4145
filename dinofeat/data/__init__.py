"""Files and arrays to tensors: image files, preprocessing, bands, inputs, collections, video decoding."""
