"""The papers' protocols: weighted k-NN, linear probe, retrieval, copy detection, DAVIS, segmentation."""
