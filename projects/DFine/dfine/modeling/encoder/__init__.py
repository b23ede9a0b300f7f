from .hybrid_encoder import HybridEncoder  # noqa: F401
