"""Models as plain ``nn.Module``s, built from config through ``_target_``."""
