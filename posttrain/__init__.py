"""Post-training as scaling studies: fine-tuning (full, LoRA, QLoRA, prompt tuning), post-training
quantization, reward models and policy optimisation (best-of-n, PPO, DPO/IPO).

Every entry point starts from a run directory (or a converted Hugging Face checkpoint) and ends in a run
directory of the same shape, so evaluation, sweeps and the fits in scaling/ serve it unchanged.
"""
