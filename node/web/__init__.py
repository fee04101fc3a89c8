"""The review worklist web app (FastAPI + Jinja2, server-rendered) and the thread that serves it."""
