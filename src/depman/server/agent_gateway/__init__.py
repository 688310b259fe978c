"""The agent gateway: every agent request answered through one pipeline.

    guard (server/guard.py) → front (asgi.py) ─┬─▶ pipeline (pipeline.py)
                  FastAPI routes (api/agent_*) ─┘    parse once (requests.py)
                                                     credentials once (credentials.py)
                                                     memo (memo.py) → quick (quick.py)
                                                       → full (full.py)
                                                     encode once (answers.py)
    write-behind of memo'd heartbeats: write_behind.py
"""
