"""The U-Net, its preprocessing, training, evaluation and serving export."""
