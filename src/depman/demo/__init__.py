"""`depman demo`: a whole fleet on one machine (server, model origin, two agents, jobs)."""
