"""The agent gateway: every agent request parsed and answered through one pipeline.

    guard (server/guard.py) → latency timer → front (asgi.py) ─▶ pipeline (pipeline.py)
      (FastAPI's agent routes only document /openapi.json)      parse once (requests.py)
                                                                 credentials once (credentials.py)
                                                                 memo (memo.py) → quick (quick.py)
                                                                   → full (full.py)
                                                                 encode once (answers.py)
    write-behind of memo'd heartbeats: write_behind.py
    the memos, buffers and wake-ups it keeps, and what drops them: server/cache/
"""
