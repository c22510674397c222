"""``bulksend serve``: the long-lived daemon, its configuration and its admin API."""
