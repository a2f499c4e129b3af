"""Fake Realtime transcription server: a pure per-session core (session.py, faults.py) and a
thin aiohttp edge (app.py)."""
