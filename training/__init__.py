"""Training: the synthetic talking-head data set (synthetic.py, animated by the puppet renderer in
puppet.py from ingredients.py's real media), real-corpus preparation (prepare.py, Ray Data), the shard
format both write (shards.py), the DeepSpeed run of the frame VAE and the SFA transformer (loops.py
runs the stages; stage.py is one stage's loop, sampler.py its batches, latents.py the frozen VAE's
latents; config.py, losses.py, checkpointing.py and tracking.py its settings, losses, checkpoints and
MLflow records) and the acceptance checks of a trained checkpoint (acceptance.py, rollout.py)."""
