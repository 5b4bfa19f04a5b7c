"""``MemoryBackend`` where the published package's testing docs import it from."""

from soniq.backends.memory import MemoryBackend

__all__ = ["MemoryBackend"]
