"""Deliverability: the sender's domain and quota before sending, TEM's blocklists, and one-click
unsubscribe (docs/deliverability.md)."""
