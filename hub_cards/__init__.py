"""Model-card templates shipped with flatten-hf (see README.md in this folder)."""
