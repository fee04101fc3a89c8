"""PyTorch side of dicomnode: network, datasets, training, evaluation and the released artifact."""
