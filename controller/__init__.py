"""The DeepLabTraining operator: API models, the pure plan, and the thin runtime around it."""
