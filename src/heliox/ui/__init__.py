"""The admin UI served by the gateway at /ui: server-rendered pages, live parts over SSE."""
