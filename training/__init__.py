"""Training: the synthetic talking-head data set (puppet renderer), real-corpus preparation (Ray Data)
and the DeepSpeed training loops of the frame VAE and the SFA transformer."""
