"""rtsoak: connection-reliability soak tests for realtime speech-to-text WebSocket APIs."""

__version__ = "0.1.0"
