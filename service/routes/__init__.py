"""Routers, one per resource: health (health, ready, metrics), identify, gallery."""
