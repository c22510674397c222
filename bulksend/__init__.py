"""bulksend: async, high-throughput bulk email sending through Scaleway Transactional Email."""

__version__ = "0.1.0"

__all__ = ["__version__"]
