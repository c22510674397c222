"""A campaign: its file (TOML), its recipients, and rendering and checking each recipient's email."""
